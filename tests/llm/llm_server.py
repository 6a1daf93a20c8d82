"""Start and stop a real `streamfaas llm` process for tests (and the benchmark)."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from platform_fixture import wait_for  # noqa: E402

API_KEY = "sk-test-3f1c9b7e2a"


async def async_wait_for(
    predicate: Callable[[], Any],
    deadline_s: float = 10.0,
    interval: float = 0.005,
    what: str = "condition",
) -> Any:
    """``wait_for`` for async tests: the blocking predicate runs in a thread, so the test's own
    event loop keeps running (and, say, really closes a socket the test closed)."""
    deadline = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(predicate)
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {deadline_s}s waiting for {what} (last: {last!r})")


class LLMServer:
    """``python -m streamfaas.llm --port 0`` in its own process group, always stopped by close()."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.args = args
        self.port_file = workdir / "port"
        self.log_path = workdir / "llm.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.banner = ""

    def start(self, timeout: float = 30.0) -> LLMServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p
        )
        cmd = [
            sys.executable,
            "-m",
            "streamfaas.llm",
            "--port",
            "0",
            "--port-file",
            str(self.port_file),
            *self.args,
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True
            )
        try:
            self.banner = self._read_banner(timeout)
            port = int(
                wait_for(
                    lambda: self.port_file.exists() and self.port_file.read_text().strip(),
                    timeout=5,
                    what="the port file",
                )
            )
        except BaseException:
            self.close()
            raise
        self.url = f"http://127.0.0.1:{port}"
        return self

    def _read_banner(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no banner within {timeout}s; log:\n{self.log()}")
                if sel.select(left):
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    if not chunk:
                        raise AssertionError(
                            f"server exited ({self.proc.wait()}) before listening; log:\n{self.log()}"
                        )
                    buf += chunk
        return buf.decode().strip()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def get_json(self, path: str, headers: dict[str, str] | None = None) -> Any:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self, headers: dict[str, str] | None = None) -> dict[str, Any]:
        return dict(self.get_json("/v1/stats", headers))

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; the exit status."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
