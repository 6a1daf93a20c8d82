"""Start and stop a real gateway (with its local provider) for tests, and deploy functions to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from streamfaas.provider.images import ImageStore

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll until ``predicate`` returns a truthy value, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc), so a test can prove none is left behind."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Signals:
    """A threaded HTTP server on 127.0.0.1:0 through which a test and its functions synchronise.

    A sandboxed function sees none of the test's files, but it shares the host's network, so it
    calls this with urllib (the URL travels in an env var, e.g. ``SIGNALS``):

    - ``GET /wait/NAME?timeout=S`` answers 200 as soon as the test has opened NAME, or 504 if it
      has not after S seconds (default 30, at most 60); ``timeout=0`` asks without waiting.
    - ``POST /mark/NAME`` records a mark holding the request body and answers how many marks
      NAME has now.
    """

    MAX_WAIT = 60.0

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._opened: set[str] = set()
        self._marks: dict[str, list[bytes]] = {}
        self._closed = False
        signals = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                url = urlsplit(self.path)
                name = url.path.removeprefix("/wait/")
                timeout = min(float(parse_qs(url.query).get("timeout", ["30"])[0]), signals.MAX_WAIT)
                if name == url.path or not name:
                    self._answer(404, b"use /wait/NAME")
                elif signals._wait_opened(name, timeout):
                    self._answer(200, b"open")
                else:
                    self._answer(504, b"not opened in time")

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                name = self.path.removeprefix("/mark/")
                if name == self.path or not name:
                    self._answer(404, b"use /mark/NAME")
                else:
                    self._answer(200, str(signals._mark(name, body)).encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256  # many functions may mark at once (the default backlog is 5)

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    # ---- the server's side ----
    def _wait_opened(self, name: str, timeout: float) -> bool:
        with self._changed:
            self._changed.wait_for(lambda: name in self._opened or self._closed, timeout)
            return name in self._opened

    def _mark(self, name: str, body: bytes) -> int:
        with self._changed:
            marks = self._marks.setdefault(name, [])
            marks.append(body)
            self._changed.notify_all()
            return len(marks)

    # ---- the test's side ----
    def open(self, name: str) -> None:
        """Let every function waiting on ``name`` (now or later) go on."""
        with self._changed:
            self._opened.add(name)
            self._changed.notify_all()

    def marks(self, name: str) -> list[bytes]:
        with self._changed:
            return list(self._marks.get(name, []))

    def wait_marks(self, name: str, count: int = 1, timeout: float = 20.0) -> list[bytes]:
        """Wait until ``name`` has at least ``count`` marks, or fail at the deadline."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._marks.get(name, [])) >= count, timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {count} mark(s) {name!r} "
                                     f"(got {len(self._marks.get(name, []))})")
            return list(self._marks[name])

    def close(self) -> None:
        with self._changed:
            self._closed = True  # waiting functions are answered at once
            self._changed.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def streamfaas_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamfaas.cli", *args]


class Platform:
    """A gateway process on 127.0.0.1 with its own state directory."""

    def __init__(self, state_dir: Path, extra_args: tuple[str, ...] = (), *, sandbox: bool = True) -> None:
        self.state_dir = state_dir
        # The gateway's default, as users run it: sandboxed wherever bwrap works. Functions
        # then see none of the test's files; they synchronise with it through ``Signals``.
        # Only tests of the unsandboxed mode pass sandbox=False.
        self.extra_args = extra_args if sandbox else (*extra_args, "--no-sandbox")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.images = ImageStore(state_dir / "images")
        self.http = httpx.Client(timeout=30)
        self.log_path = state_dir / "gateway.log"
        self.password = ""

    def start(self) -> Platform:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.state_dir / "gateway.port"
        port_file.unlink(missing_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            streamfaas_cmd("--state-dir", str(self.state_dir), "gateway", "--port", "0", "--port-file", str(port_file), *self.extra_args),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env(),
        )
        log.close()
        port = wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 20, what="gateway port")
        self.url = f"http://127.0.0.1:{port}"
        password_file = self.state_dir / "auth" / "admin-password"
        if password_file.exists():
            self.password = password_file.read_text().strip()
            self.http.auth = ("admin", self.password)
        return self

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["STREAMFAAS_STATE_DIR"] = str(self.state_dir)
        env["OPENFAAS_URL"] = self.url
        return env

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc = self.proc
        if proc is None:
            return
        below = descendants(proc.pid)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.proc = None
        # Replicas run in their own process groups; they must go with the gateway.
        try:
            wait_for(lambda: not any(alive(p) for p in below), 15, what="replica processes to exit")
        finally:
            for pid in below:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.http.close()

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- functions ----
    def write_function(self, root: Path, name: str, code: str, requirements: str = "") -> Path:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "handler.py").write_text(textwrap.dedent(code))
        (folder / "requirements.txt").write_text(requirements)
        return folder

    def deploy(
        self,
        name: str,
        handler: Path,
        *,
        lang: str = "python3-flask",
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        image: str | None = None,
        wait: bool = True,
    ) -> None:
        image = image or f"{name}:latest"
        self.images.build(image, lang, handler)
        body = {"service": name, "image": image, "envVars": env or {}, "labels": labels or {}}
        r = self.http.post(f"{self.url}/system/functions", json=body)
        assert r.status_code == 202, r.text
        if wait:
            self.wait_ready(name)

    def status(self, name: str) -> dict[str, Any]:
        r = self.http.get(f"{self.url}/system/function/{name}")
        r.raise_for_status()
        # Read as a Go client reads it: the counts are omitted when 0 (omitempty).
        data: dict[str, Any] = {"replicas": 0, "availableReplicas": 0, "invocationCount": 0, **r.json()}
        return data

    def wait_ready(self, name: str, replicas: int = 1, timeout: float = 30) -> None:
        wait_for(lambda: self.status(name)["availableReplicas"] >= replicas, timeout, what=f"{name} to be ready")

    def function_url(self, name: str) -> str:
        return f"{self.url}/function/{name}"
