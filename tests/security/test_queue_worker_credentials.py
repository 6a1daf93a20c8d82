"""A standalone queue worker uses the admin's credentials only to fetch a private function's
token from the admin API: its calls to functions carry that token, or nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from queue_fixture import ECHO, FAST_QUEUE, CallbackReceiver, submit

from platform_fixture import Platform, streamfaas_cmd

_NOT_FORWARDED = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}


class RecordingProxy:
    """A reverse proxy on 127.0.0.1:0 in front of a gateway that records the Authorization
    header of every request it passes on: a worker pointed here shows what it sends."""

    def __init__(self, upstream: str) -> None:
        self.seen: list[tuple[str, str]] = []  # (path, Authorization)
        self._lock = threading.Lock()
        http = httpx.Client(base_url=upstream, timeout=30)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy.seen.append((self.path, self.headers.get("Authorization", "")))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
                r = http.request(self.command, self.path, content=body, headers=headers)
                self.send_response(r.status_code)
                for name in ("Content-Type", "WWW-Authenticate"):
                    if name in r.headers:
                        self.send_header(name, r.headers[name])
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward  # noqa: N815 - http.server's naming

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._http = http
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def function_calls(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(path, auth) for path, auth in self.seen if path.startswith("/function/")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._http.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Platform]:
    p = Platform(tmp_path / "state", (*FAST_QUEUE, "--no-queue-worker")).start()
    try:
        p.deploy("pub", p.write_function(tmp_path, "pub", ECHO))
        p.deploy("hidden", p.write_function(tmp_path, "hidden", ECHO), labels={"streamfaas.auth/private": "true"})
        p.deploy("turncoat", p.write_function(tmp_path, "turncoat", ECHO))  # public, until the test says
        yield p
    finally:
        p.close()


def test_async_worker_never_sends_admin_credentials(
    gateway: Platform, receiver: CallbackReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = RecordingProxy(gateway.url)
    try:
        # The admin has logged in to the address the worker uses, so it has the admin's credentials.
        monkeypatch.setenv("OPENFAAS_CONFIG", str(tmp_path / "openfaas"))
        login = subprocess.run(streamfaas_cmd("login", "--gateway", proxy.url, "--password-stdin"),
                               input=gateway.password.encode() + b"\n", capture_output=True, env=gateway.env(), timeout=60)
        assert login.returncode == 0, login.stderr
        token = gateway.http.get(f"{gateway.url}/system/function-token/hidden").json()["token"]
        public = submit(gateway, "pub", b"p", callback=receiver.url).headers["X-Call-Id"]
        private = submit(gateway, "hidden", b"h", callback=receiver.url,
                         headers={"Authorization": f"Bearer {token}"}).headers["X-Call-Id"]
        # Queued by an anonymous caller while the function was public; made private before the
        # job runs: it runs without the token the caller never had (the function answers 401).
        early = submit(gateway, "turncoat", b"t", callback=receiver.url).headers["X-Call-Id"]
        update = {"service": "turncoat", "image": "turncoat:latest", "labels": {"streamfaas.auth/private": "true"}}
        assert gateway.http.put(f"{gateway.url}/system/functions", json=update).status_code == 202
        gateway.wait_ready("turncoat")
        with open(tmp_path / "worker.log", "wb") as log:
            worker = subprocess.Popen(
                streamfaas_cmd("queue-worker", "--gateway", proxy.url, "--state-dir", str(gateway.state_dir), *FAST_QUEUE),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=gateway.env(),
            )
        try:
            receiver.wait_all([public, private, early], timeout=60)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)
        assert [c.function_status for c in receiver.of(public) + receiver.of(private)] == ["200", "200"]
        assert [c.function_status for c in receiver.of(early)] == ["401"]
        assert sorted(proxy.function_calls()) == [
            ("/function/hidden", f"Bearer {token}"), ("/function/pub", ""), ("/function/turncoat", "")]
    finally:
        proxy.close()
