"""The async callback as a way in: an anonymous caller's ``X-Callback-Url`` makes the queue worker
POST the function's output where the caller says. By default it may go to public addresses only,
never to what only the platform reaches (its loopback, link-local metadata, private networks):
an address in the URL is refused at submit (400), a name on what it resolves to when the worker
connects (the job is dead-lettered at once). ``--callback-allow CIDR`` widens it."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from queue_fixture import ECHO, CallbackReceiver, submit

from platform_fixture import Platform, wait_for

# A job whose callback is refused must not be retried: with these it would wait an hour.
NO_RETRY_SOON = ("--queue-backoff", "1h", "--queue-backoff-max", "1h", "--queue-max-retries", "5")


def _gateway(root: Path, *extra: str) -> Platform:
    p = Platform(root / "state", (*NO_RETRY_SOON, *extra)).start()
    try:
        p.deploy("echo", p.write_function(root, "echo", ECHO))
    except BaseException:
        p.close()
        raise
    return p


@pytest.fixture(scope="module")
def default_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = _gateway(tmp_path_factory.mktemp("callback-default"))
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def loopback_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = _gateway(tmp_path_factory.mktemp("callback-loopback"), "--callback-allow", "127.0.0.1/32")
    try:
        yield p
    finally:
        p.close()


def _jobs(platform: Platform, *, failed: bool) -> dict[str, dict[str, Any]]:
    r = platform.http.get(f"{platform.url}/system/queue", params={"failed": str(failed).lower()})
    r.raise_for_status()
    return {job["callId"]: job for job in r.json()["jobs"]}


class Redirector:
    """An HTTP server on ``host`` that answers every POST with a 307 to ``location``."""

    def __init__(self, host: str, location: str) -> None:
        self.posts = 0
        redirector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                redirector.posts += 1
                self.send_response(307)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_internal_address_callback_is_refused_at_submit(default_gateway: Platform, receiver: CallbackReceiver) -> None:
    port = receiver.url.rsplit(":", 1)[1].split("/", 1)[0]
    internal = [
        f"http://127.0.0.1:{port}/internal/admin?x=1",
        f"http://[::1]:{port}/done",
        f"http://[::ffff:127.0.0.1]:{port}/done",
        f"http://0.0.0.0:{port}/done",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/done",
        "http://10.0.0.1/done",
        "http://172.16.0.1/done",
        "http://192.168.1.1/done",
        "http://100.64.0.1/done",
        "http://[fd00::1]/done",
        "http://224.0.0.1/done",
    ]
    # Short forms the client would connect to as 127.0.0.1 without resolving them.
    not_canonical = [f"http://127.1:{port}/done", f"http://2130706433:{port}/done"]
    for i, url in enumerate(internal + not_canonical):
        r = submit(default_gateway, "echo", b"x", callback=url, call_id=f"internal-{i}")
        assert r.status_code == 400, (url, r.status_code, r.text)
        assert "\n" not in r.text.strip(), r.text
        assert ("--callback-allow" if url in internal else "canonical form") in r.text, r.text
        assert "X-Call-Id" not in r.headers
    # Refused before it was stored: no job to run, nothing called.
    stored = set(_jobs(default_gateway, failed=False)) | set(_jobs(default_gateway, failed=True))
    assert not {f"internal-{i}" for i in range(len(internal) + len(not_canonical))} & stored
    assert receiver.attempts == []
    r = submit(default_gateway, "echo", b"x", callback=f"http://127.0.0.1:{port}/done")
    assert "127.0.0.1 is a loopback address" in r.text, r.text


def test_name_resolving_to_loopback_is_refused_when_sent_and_dead_lettered(
    default_gateway: Platform, receiver: CallbackReceiver
) -> None:
    port = receiver.url.rsplit(":", 1)[1].split("/", 1)[0]
    r = submit(default_gateway, "echo", b"x", callback=f"http://localhost:{port}/done")
    assert r.status_code == 202, r.text  # a name: checked when the worker connects
    call_id = r.headers["X-Call-Id"]
    # Dead-lettered after its one attempt, not retried (the next retry would be an hour away).
    job = wait_for(lambda: _jobs(default_gateway, failed=True).get(call_id), 60, interval=0.05,
                   what="the job in the dead-letter list")
    assert job["attempts"] == 1, job
    assert "localhost" in job["lastError"] and "loopback" in job["lastError"], job
    assert "--callback-allow" in job["lastError"], job
    assert receiver.attempts == []


def test_allowed_network_gets_its_callback(loopback_gateway: Platform, receiver: CallbackReceiver) -> None:
    port = receiver.url.rsplit(":", 1)[1].split("/", 1)[0]
    ids = []
    for url in (receiver.url, f"http://localhost:{port}/done"):
        r = submit(loopback_gateway, "echo", b"hello", callback=url)
        assert r.status_code == 202, r.text
        ids.append(r.headers["X-Call-Id"])
    receiver.wait_all(ids, timeout=60)
    assert all(c.function_status == "200" for i in ids for c in receiver.of(i))
    # The worker is named by an opaque id, not by the gateway's host name and pid.
    workers = {c.worker for i in ids for c in receiver.of(i)}
    assert all(re.fullmatch(r"[0-9a-f]{12}", w) for w in workers), workers
    assert not any(socket.gethostname() in w for w in workers)
    # 127.0.0.1/32 is allowed, the rest of the loopback network still is not.
    refused = submit(loopback_gateway, "echo", b"x", callback=f"http://127.0.0.2:{port}/done")
    assert refused.status_code == 400, refused.text


def test_redirect_to_a_refused_address_is_not_followed(loopback_gateway: Platform) -> None:
    refused = Redirector("127.0.0.2", "http://127.0.0.1:1/")  # outside 127.0.0.1/32: it counts what reaches it
    allowed = Redirector("127.0.0.1", refused.url)
    try:
        r = submit(loopback_gateway, "echo", b"x", callback=allowed.url)
        assert r.status_code == 202, r.text
        call_id = r.headers["X-Call-Id"]
        # A 307 is the callback's answer, a failed attempt (retried in an hour), never followed.
        error = wait_for(lambda: (_jobs(loopback_gateway, failed=False).get(call_id) or {}).get("lastError") or None,
                         60, interval=0.05, what="the callback's failed attempt")
        assert "answered HTTP 307" in error, error
        assert allowed.posts == 1 and refused.posts == 0
    finally:
        allowed.close()
        refused.close()
