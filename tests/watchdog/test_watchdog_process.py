"""The watchdog on its own, as of-watchdog is used: settings from the environment."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from platform_fixture import alive, descendants, wait_for
from streamfaas.provider.images import ImageStore

SLOW = """
import os, time

def handle(req):
    open(os.environ["STARTED"], "w").close()
    time.sleep(1.0)
    return "finished"
"""


class Watchdog:
    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url


@pytest.fixture
def watchdog(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Watchdog]:
    extra_env: dict[str, str] = getattr(request, "param", {})
    handler = tmp_path / "fn"
    handler.mkdir()
    (handler / "handler.py").write_text(textwrap.dedent(SLOW))
    image = ImageStore(tmp_path / "images").build("slow", "python3-flask", handler)
    env = {
        **os.environ,
        "fprocess": f"{sys.executable} index.py",
        "port": "0",
        "STARTED": str(tmp_path / "started"),
        "drain_timeout": "10s",
        **extra_env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamfaas.watchdog"], cwd=image.path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert " watchdog: watchdog listening on " in line, line
        url = line.split()[-1]
        wait_for(lambda: httpx.get(url + "/_/ready").status_code == 200, what="the watchdog to be ready")
        yield Watchdog(proc, url)
    finally:
        below = descendants(proc.pid)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in below:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_health_and_ready_endpoints(watchdog: Watchdog) -> None:
    assert httpx.get(watchdog.url + "/_/health").text == "OK\n"
    assert httpx.get(watchdog.url + "/_/ready").status_code == 200


def test_sigterm_drains_in_flight_request_then_exits(watchdog: Watchdog, tmp_path: Path) -> None:
    result: list[httpx.Response] = []
    t = threading.Thread(target=lambda: result.append(httpx.post(watchdog.url, content=b"x", timeout=30)))
    t.start()
    wait_for((tmp_path / "started").exists, what="the request to reach the function")
    function_pids = descendants(watchdog.proc.pid)
    watchdog.proc.send_signal(signal.SIGTERM)
    t.join(30)
    assert result and result[0].status_code == 200 and result[0].text == "finished"
    assert watchdog.proc.wait(15) == 0
    wait_for(lambda: not any(alive(p) for p in function_pids), what="the function process to exit")


@pytest.mark.parametrize("watchdog", [{"STREAMFAAS_SHUTDOWN_DELAY": "2s"}], indirect=True)
def test_after_sigterm_a_pod_serves_new_requests_for_the_shutdown_delay_while_not_ready(watchdog: Watchdog) -> None:
    # Kubernetes: the gateways learn of a terminating pod a moment after the kubelet's SIGTERM.
    watchdog.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: httpx.get(watchdog.url + "/_/ready").status_code == 503, what="the watchdog to say it is going")
    r = httpx.post(watchdog.url, content=b"x", timeout=30)
    assert r.status_code == 200 and r.text == "finished"
    assert watchdog.proc.wait(15) == 0


def test_function_output_is_prefixed(tmp_path: Path) -> None:
    env = {**os.environ, "fprocess": f"{sys.executable} -c \"print('hello from fn')\"", "port": "0", "STREAMFAAS_FUNCTION": "demo"}
    proc = subprocess.run(
        [sys.executable, "-m", "streamfaas.watchdog"], env=env, capture_output=True, timeout=30, cwd=tmp_path
    )
    out = proc.stdout.decode()
    assert "demo[0] stdout: hello from fn" in out
    assert proc.returncode == 1  # the function exited: the watchdog reports it and stops


def test_missing_fprocess_is_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "fprocess"}
    env["port"] = "0"
    proc = subprocess.run([sys.executable, "-m", "streamfaas.watchdog"], env=env, capture_output=True, timeout=30, cwd=tmp_path)
    assert proc.returncode != 0
    assert b"fprocess is not set" in proc.stdout + proc.stderr
    assert b"Traceback" not in proc.stdout + proc.stderr


def test_health_reports_a_function_that_stops_answering(tmp_path: Path) -> None:
    # A function server that answers its first probes, then hangs: /_/health turns 503.
    server = tmp_path / "server.py"
    server.write_text(textwrap.dedent("""
        import os, socket, time
        sock = socket.socket(fileno=int(os.environ["STREAMFAAS_LISTEN_FD"]))
        for _ in range(2):
            conn, _ = sock.accept()
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nOK")
            conn.close()
        time.sleep(60)
    """))
    env = {**os.environ, "fprocess": f"{sys.executable} {server}", "port": "0", "healthcheck_interval": "300ms"}
    proc = subprocess.Popen([sys.executable, "-m", "streamfaas.watchdog"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().split()[-1]
        wait_for(lambda: httpx.get(url + "/_/health").status_code == 200, what="the function to be healthy first")
        wait_for(lambda: httpx.get(url + "/_/health").status_code == 503, what="health to report the hung function")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_the_watchdogs_imports_leave_out_the_gateways_packages() -> None:
    """What the fork server imports, every replica's watchdog holds (forked, its pages counted in
    each watchdog's RSS). A constant imported from the provider package once pulled in all of
    it, pydantic included: +9 MiB in every watchdog (38 against 29 MiB RSS)."""
    probe = textwrap.dedent("""
        import json, sys
        from streamfaas.watchdog import fork_server
        fork_server._preload()
        print(json.dumps(sorted(sys.modules)))
    """)
    done = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout)
    assert "streamfaas.watchdog.server" in modules  # it did preload the watchdog
    heavy = [m for m in modules if m.split(".")[0] in ("pydantic", "pydantic_core", "yaml", "click", "prometheus_client", "rich")
             or m.startswith(("streamfaas.provider", "streamfaas.gateway", "streamfaas.cli"))]
    assert heavy == []


@pytest.mark.parametrize("fprocess", ["wc -c", "cat"])
def test_a_forked_process_whose_streamed_body_stalls_is_killed_after_read_timeout(tmp_path: Path, fprocess: str) -> None:
    """Streaming mode forks a process per request and streams the body to its stdin. A caller
    that sends a piece and then nothing held that process until the caller left; on Kubernetes
    any pod reaches a watchdog. ``wc -c`` waits for the body's end (so it is a 408); ``cat``
    answers at once (so its stream is cut)."""
    env = {**os.environ, "fprocess": fprocess, "mode": "streaming", "port": "0", "read_timeout": "1s"}
    proc = subprocess.Popen([sys.executable, "-m", "streamfaas.watchdog"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        url = httpx.URL(proc.stdout.readline().decode().split()[-1])
        with socket.create_connection((url.host, url.port), timeout=20) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: fn\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            wait_for(lambda: len(descendants(proc.pid)) == 1, what="the request's process")
            started = time.monotonic()
            reply = b""
            # The stream cut closes the connection; a 408 is whole at its message (aiohttp then
            # lingers, reading what else of the body comes, before it closes).
            while (chunk := sock.recv(65536)) and not (reply := reply + chunk).endswith(b"(read_timeout)\n"):
                pass
            took = time.monotonic() - started
        wait_for(lambda: not descendants(proc.pid), what="the request's process to be killed")
        if fprocess == "wc -c":
            assert reply.startswith(b"HTTP/1.1 408 "), reply
            assert reply.endswith(b"\r\n\r\nrequest body stalled: nothing of it for 1s (read_timeout)\n"), reply
        else:
            assert reply.startswith(b"HTTP/1.1 200 "), reply
            assert b"hello" in reply and not reply.endswith(b"0\r\n\r\n"), reply  # cut, not ended as if whole
        assert took < 5
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
