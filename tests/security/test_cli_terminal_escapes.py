"""Text that a function or a gateway controls reaches the admin's terminal with its control
characters escaped (``\\x1b``): an error line, and the text ``invoke`` and ``chat`` decode from
an event stream. OSC 52 (``ESC ] 52 ; c ; BASE64 BEL``) would otherwise write the clipboard and
OSC 0 the window title, even through a pipe (click strips only colour codes). What the admin
asked for as bytes stays bytes: ``invoke --raw``, and a plain response body, as faas-cli does.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from platform_fixture import Platform, streamfaas_cmd

# OSC 52 (set the clipboard to "echo pwned"), OSC 0 (set the window title) and the 8-bit CSI
# (U+009B, which a terminal in UTF-8 mode reads as ESC [), each with its visible text.
HOSTILE = "failed: \x1b]52;c;ZWNobyBwd25lZA==\x07 \x1b]0;pwned\x07 \u009b2J done"
ESCAPED = "failed: \\x1b]52;c;ZWNobyBwd25lZA==\\x07 \\x1b]0;pwned\\x07 \\x9b2J done"
CONTROLS = ("\x1b", "\x07", "\u009b")


def assert_inert(out: str) -> None:
    for char in CONTROLS:
        assert char not in out, f"{char!r} reached the terminal: {out!r}"


def sse(*events: str) -> bytes:
    return "".join(events).encode()


DELTAS = sse(
    'data: {"content": "hello "}\n\n',
    "data: " + json.dumps({"content": HOSTILE}) + "\n\n",
    "data: " + json.dumps({"content": "\nsecond line\tend"}) + "\n\n",
    "event: done\ndata: {}\n\n",
)


class _Hostile(http.server.BaseHTTPRequestHandler):
    """A gateway that answers every /system call with HTTP 500 and a hostile first line, and
    every function call with an event stream whose text carries the same escapes."""

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/function/raw-error"):
            self._send(500, "text/plain; charset=utf-8", HOSTILE.encode())
        elif self.path.startswith("/function/stream-error"):
            error = {"error": {"message": HOSTILE, "status": 502}}
            self._send(200, "text/event-stream", sse('data: {"content": "partial"}\n\n', "event: error\ndata: " + json.dumps(error) + "\n\n"))
        elif self.path.startswith("/function/"):
            self._send(200, "text/event-stream", DELTAS)
        else:
            self._send(500, "text/plain; charset=utf-8", (HOSTILE + "\nsecond line \x1b[2J").encode())

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _HostileData(_Hostile):
    """A gateway whose successful answers carry the escapes in the values the CLI prints."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        data = {
            "/system/function-token/victim": {"token": HOSTILE},
            "/system/namespaces": [HOSTILE],
            "/system/queue/retry": {"retried": HOSTILE},
            "/system/queue?failed=true": {"purged": HOSTILE},
        }[self.path]
        self._send(200, "application/json", json.dumps(data).encode())

    do_GET = do_POST = do_PUT = do_DELETE = _answer


def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def hostile() -> Iterator[str]:
    yield from serve(_Hostile)


@pytest.fixture
def hostile_data() -> Iterator[str]:
    yield from serve(_HostileData)


def cli_env(tmp_path: Path, gateway: str) -> dict[str, str]:
    """The admin's shell pointed at ``gateway``: no login, no local password."""
    env = dict(os.environ)
    env["OPENFAAS_URL"] = gateway
    env["STREAMFAAS_STATE_DIR"] = str(tmp_path / "state")
    env["OPENFAAS_CONFIG"] = str(tmp_path / "openfaas")
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def run_cli(env: dict[str, str], *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(streamfaas_cmd(*args), input=stdin, capture_output=True, env=env, timeout=60)


@pytest.mark.parametrize("args", [
    ("list",),
    ("describe", "victim"),
    ("secret", "list"),
    ("namespace", "list"),
    ("queue", "retry", "some-call-id"),
    ("token", "victim"),
    ("scale", "victim", "-r", "1"),
    ("logs", "victim"),
    ("invoke", "raw-error"),
    ("chat", "raw-error", "--no-stats"),
])
def test_a_hostile_gateways_error_line_is_printed_escaped(hostile: str, tmp_path: Path, args: tuple[str, ...]) -> None:
    done = run_cli(cli_env(tmp_path, hostile), *args, stdin=b"hello\n")
    assert done.returncode == 1, done
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert_inert(stdout + stderr)
    assert ESCAPED in stderr  # the message is still there to read
    assert "Traceback" not in stderr


@pytest.mark.parametrize("args", [
    ("token", "victim"),
    ("namespace", "list"),
    ("queue", "retry", "some-call-id"),
    ("queue", "purge", "--failed", "--yes"),
])
def test_values_from_a_hostile_gateway_are_printed_escaped(hostile_data: str, tmp_path: Path, args: tuple[str, ...]) -> None:
    done = run_cli(cli_env(tmp_path, hostile_data), *args)
    assert done.returncode == 0, done
    assert_inert(done.stdout.decode() + done.stderr.decode())
    assert ESCAPED in done.stdout.decode() + done.stderr.decode()


def test_invoke_escapes_the_text_it_decodes_from_an_event_stream(hostile: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path, hostile)
    done = run_cli(env, "invoke", "chatty")
    assert done.returncode == 0, done
    stdout = done.stdout.decode()
    assert_inert(stdout + done.stderr.decode())
    # Line breaks and tabs are text; everything else is shown escaped.
    assert stdout == f"hello {ESCAPED}\nsecond line\tend\n"

    # --raw asked for the bytes as they come: the event stream exactly as the gateway sent it.
    raw = run_cli(env, "invoke", "chatty", "--raw")
    assert raw.returncode == 0, raw
    assert raw.stdout == DELTAS


def test_chat_escapes_the_answer_and_the_streams_error(hostile: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path, hostile)
    done = run_cli(env, "chat", "chatty", "--no-stats", stdin=b"hi\n")
    assert done.returncode == 0, done
    assert_inert(done.stdout.decode() + done.stderr.decode())
    assert done.stdout.decode() == f"hello {ESCAPED}\nsecond line\tend\n\n"  # the answer, then the prompt's end

    failed = run_cli(env, "chat", "stream-error", "--no-stats", stdin=b"hi\n")
    assert failed.returncode == 1, failed
    assert_inert(failed.stdout.decode() + failed.stderr.decode())
    assert f"[error] {ESCAPED}" in failed.stderr.decode()


# A real function: its error body, its event stream, or its plain body, all with the escapes.
FUNCTION = f"""
import json
from flask import Response

HOSTILE = {HOSTILE!r}

def handle(req):
    if req == "error":
        return Response(HOSTILE, status=500)
    if req == "stream":
        events = ["data: " + json.dumps({{"content": HOSTILE}}) + "\\n\\n", "event: done\\ndata: {{}}\\n\\n"]
        return Response(events, mimetype="text/event-stream")
    return Response(HOSTILE.encode() + bytes(range(256)), mimetype="application/octet-stream")
"""


def test_a_functions_error_and_stream_are_escaped_and_its_plain_body_kept(platform: Platform, tmp_path: Path) -> None:
    platform.deploy("hostile", platform.write_function(tmp_path, "hostile", FUNCTION))
    env = platform.env()
    env["PYTHONIOENCODING"] = "utf-8"

    error = run_cli(env, "invoke", "hostile", stdin=b"error")
    assert error.returncode == 1, error
    assert_inert(error.stdout.decode() + error.stderr.decode())
    assert f"Error: hostile: HTTP 500: {ESCAPED}" in error.stderr.decode()

    stream = run_cli(env, "invoke", "hostile", stdin=b"stream")
    assert stream.returncode == 0, stream
    assert stream.stdout.decode() == ESCAPED + "\n"

    # A plain body is the function's bytes, byte for byte (as faas-cli and curl write it).
    plain = run_cli(env, "invoke", "hostile", stdin=b"plain")
    assert plain.returncode == 0, plain
    assert plain.stdout == HOSTILE.encode() + bytes(range(256))
