"""Real processes for the queue tests: nats-server, a callback receiver, standalone workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from platform_fixture import Platform, streamfaas_cmd, wait_for

NATS_SERVER = shutil.which("nats-server")

# The tests' callback receivers listen on 127.0.0.1, which a callback may reach only when the
# operator allows it (by default callbacks go to public addresses only).
LOOPBACK_CALLBACKS = ("--callback-allow", "127.0.0.1/32")

# Short enough that retries, lease expiry and shutdown fit in a test; long enough to be real.
FAST_QUEUE = (
    "--queue-backoff", "50ms", "--queue-backoff-max", "200ms", "--queue-lease", "2s",
    "--queue-drain-timeout", "5s", "--queue-max-retries", "3", "--queue-concurrency", "16",
    *LOOPBACK_CALLBACKS,
)

ECHO = """
import os, time
from flask import request

def handle(req):
    time.sleep(float(os.environ.get("SLEEP", "0")))
    auth = request.headers.get("Authorization", "") + request.headers.get("Cookie", "")
    return f"{request.method} {request.full_path} auth={auth!r} body={req}"
"""

# Fails the first FAILURES calls of each call id, then succeeds. It counts its calls as marks
# "calls-<call id>" on the test's Signals (at $SIGNALS).
FLAKY = """
import os, urllib.request
from flask import request

def handle(req):
    mark = os.environ["SIGNALS"] + "/mark/calls-" + request.headers["X-Call-Id"]
    calls = int(urllib.request.urlopen(mark, b"").read())
    if calls <= int(os.environ.get("FAILURES", "2")):
        return f"failure {calls}", 500
    return f"success after {calls}"
"""

# Fails until the test opens "fixed-<call id>" on its Signals (at $SIGNALS).
FIXABLE = """
import os, urllib.error, urllib.request
from flask import request

def handle(req):
    fixed = os.environ["SIGNALS"] + "/wait/fixed-" + request.headers["X-Call-Id"] + "?timeout=0"
    try:
        urllib.request.urlopen(fixed).read()
    except urllib.error.HTTPError:
        return "broken", 503
    return "fixed"
"""


class NatsServer:
    """``nats-server -js`` on a free 127.0.0.1 port, storing in its own folder."""

    def __init__(self, root: Path, *extra: str) -> None:
        assert NATS_SERVER is not None
        self.root = root
        ports = root / "ports"
        ports.mkdir(parents=True)
        self.log = open(root / "nats.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-js", "-sd", str(root / "store"), "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", str(ports), *extra],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        found = wait_for(lambda: list(ports.glob("*.ports")), 20, what="nats-server's ports file")
        self.url: str = wait_for(lambda: json.loads(found[0].read_text() or "{}").get("nats", [None])[0], 10, what="NATS url")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@dataclass(frozen=True)
class Callback:
    call_id: str
    function_status: str
    duration: str
    worker: str
    body: bytes
    function_name: str = ""
    answered: int = 200  # what the receiver answered; 0: it never answered (``hang``)
    received: float = 0.0  # time.monotonic() when it arrived


HANG = 0  # in ``CallbackReceiver.script``: hold the callback unanswered until the receiver closes


class CallbackReceiver:
    """An HTTP server on 127.0.0.1:0 that records every callback it accepts (``calls``) and every
    one it gets (``attempts``). ``fail_status`` makes it refuse all; ``script`` scripts the
    answers to one call id's first callbacks."""

    def __init__(self) -> None:
        self.calls: list[Callback] = []
        self.attempts: list[Callback] = []
        self.fail_status = 0
        self._scripts: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                call_id = self.headers.get("X-Call-Id", "")
                status = receiver._answer(call_id)
                callback = Callback(
                    call_id, self.headers.get("X-Function-Status", ""),
                    self.headers.get("X-Duration-Seconds", ""), self.headers.get("X-Queue-Worker", ""), body,
                    self.headers.get("X-Function-Name", ""), status, time.monotonic(),
                )
                receiver._record(callback)
                if status == HANG:
                    receiver._closing.wait(60)
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/done"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def script(self, call_id: str, answers: Iterable[int]) -> None:
        """Answer ``call_id``'s next callbacks with these statuses (``HANG``: no answer), then 200."""
        with self._lock:
            self._scripts[call_id] = list(answers)

    def _answer(self, call_id: str) -> int:
        with self._lock:
            script = self._scripts.get(call_id)
            if script:
                return script.pop(0)
        return self.fail_status or 200

    def _record(self, callback: Callback) -> None:
        with self._lock:
            self.attempts.append(callback)
            if 200 <= callback.answered < 300:
                self.calls.append(callback)

    def ids(self) -> set[str]:
        with self._lock:
            return {c.call_id for c in self.calls}

    def of(self, call_id: str) -> list[Callback]:
        with self._lock:
            return [c for c in self.calls if c.call_id == call_id]

    def attempts_of(self, call_id: str) -> list[Callback]:
        """Every callback of ``call_id`` that arrived, accepted or not."""
        with self._lock:
            return [c for c in self.attempts if c.call_id == call_id]

    def wait_all(self, call_ids: Iterable[str], timeout: float = 60) -> None:
        wanted = set(call_ids)
        wait_for(lambda: wanted <= self.ids(), timeout, interval=0.05,
                 what=f"callbacks for {len(wanted)} jobs (missing {len(wanted - self.ids())})")

    def close(self) -> None:
        self._closing.set()  # callbacks held by HANG end now
        self.server.shutdown()
        self.server.server_close()


def refused_url() -> str:
    """A loopback URL where nothing listens: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/callback"


def queue_args(backend: str, nats_url: str | None, stream: str = "STREAMFAAS_ASYNC") -> tuple[str, ...]:
    if backend == "nats":
        assert nats_url
        return ("--queue", "nats", "--nats-url", nats_url, "--nats-stream", stream)
    return ("--queue", "sqlite")


def submit(platform: Platform, name: str, body: bytes = b"", *, callback: str | None = None,
           call_id: str | None = None, headers: dict[str, str] | None = None, path: str = "",
           client: httpx.Client | None = None) -> httpx.Response:
    hdrs = dict(headers or {})
    if callback:
        hdrs["X-Callback-Url"] = callback
    if call_id:
        hdrs["X-Call-Id"] = call_id
    http = client or httpx.Client(timeout=30)
    try:
        return http.post(f"{platform.url}/async-function/{name}{path}", content=body, headers=hdrs)
    finally:
        if client is None:
            http.close()


class Worker:
    """A ``streamfaas queue-worker`` process."""

    def __init__(self, platform: Platform, args: tuple[str, ...], log: Path) -> None:
        self.platform = platform
        self.args = args
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        seen = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                streamfaas_cmd("queue-worker", "--gateway", self.platform.url, "--state-dir", str(self.platform.state_dir), *self.args),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.platform.env(),
            )
        wait_for(lambda: b"streamfaas queue-worker" in self.log_path.read_bytes()[seen:], 20, what="the worker to start")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            raise

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")
