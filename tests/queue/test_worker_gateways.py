"""A standalone worker with several gateways: one that refuses connections is skipped at once,
and a job whose gateway dies during the call is retried through another, never lost."""

from __future__ import annotations

import socket
import socketserver
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from queue_fixture import (
    ECHO,
    FAST_QUEUE,
    CallbackReceiver,
    Worker,
    queue_args,
    refused_url,
    submit,
)

from platform_fixture import Platform, streamfaas_cmd


class DyingGateway:
    """A TCP server on 127.0.0.1:0 that reads each request's head and closes the connection
    without an answer: a gateway killed in the middle of a call, as its caller sees it."""

    def __init__(self) -> None:
        self.requests = 0
        lock = threading.Lock()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                conn.settimeout(10)
                seen = b""
                while b"\r\n\r\n" not in seen:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    seen += chunk
                with lock:
                    owner.requests += 1

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Platform, tuple[str, ...]]]:
    args = (*queue_args("sqlite", None), *FAST_QUEUE)
    platform = Platform(tmp_path / "state", (*args, "--no-queue-worker")).start()
    try:
        platform.deploy("echo", platform.write_function(tmp_path, "echo", ECHO))
        yield platform, args
    finally:
        platform.close()


def test_a_gateway_that_refuses_connections_is_skipped_without_a_retry(
    gateway: tuple[Platform, tuple[str, ...]], receiver: CallbackReceiver, tmp_path: Path
) -> None:
    platform, args = gateway
    dead = refused_url().removesuffix("/callback")
    # A retry would wait the 1 h backoff: only an immediate failover delivers in time.
    worker = Worker(platform, (*args, "--queue-backoff", "1h", "--queue-backoff-max", "1h", "--gateway", dead),
                    tmp_path / "worker.log").start()
    try:
        ids = [submit(platform, "echo", f"job {i}".encode(), callback=receiver.url).headers["X-Call-Id"] for i in range(6)]
        receiver.wait_all(ids, timeout=30)
        assert sorted(c.call_id for c in receiver.attempts) == sorted(ids)  # each once
        assert all(c.function_status == "200" for c in receiver.calls)
    finally:
        worker.stop()
    assert f"gateways {platform.url.rstrip('/')}, {dead}" in worker.output()


def test_a_job_whose_gateway_dies_mid_call_is_retried_through_another(
    gateway: tuple[Platform, tuple[str, ...]], receiver: CallbackReceiver, tmp_path: Path
) -> None:
    platform, args = gateway
    dying = DyingGateway()
    worker = Worker(platform, (*args, "--gateway", f"{dying.url},{platform.url}"), tmp_path / "worker.log")
    try:
        worker.start()
        ids = [submit(platform, "echo", f"job {i}".encode(), callback=receiver.url,
                      call_id=f"dying-{uuid.uuid4().hex[:8]}").headers["X-Call-Id"] for i in range(8)]
        receiver.wait_all(ids, timeout=60)
        assert dying.requests >= 1  # some attempts did go to the gateway that died
        for call_id in ids:
            [callback] = receiver.of(call_id)  # delivered once: only the dying gateway's attempts failed
            assert callback.function_status == "200"
            assert callback.body.endswith(f"body=job {ids.index(call_id)}".encode())
    finally:
        worker.stop()
        dying.close()


def test_a_worker_refuses_a_gateway_that_is_not_a_url(tmp_path: Path) -> None:
    done = subprocess.run(streamfaas_cmd("queue-worker", "--gateway", "http://127.0.0.1:8080,ftp://x", "--state-dir",
                                         str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "expected an http:// or https:// URL, got 'ftp://x'" in done.stderr
    assert "Traceback" not in done.stderr
