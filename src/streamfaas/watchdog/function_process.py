"""The function's own server process (``fprocess``), started and supervised by the watchdog."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
import time
from collections.abc import Mapping

import aiohttp

from .._process import die_with_parent, kill_group, listening_socket
from ..config import WatchdogConfig
from ..errors import ConfigError, DeployError

HEALTH_PATH = "/_/health"

# Settings meant for the watchdog, not for the function.
_WATCHDOG_ONLY = ("STREAMFAAS_LISTEN_FD", "STREAMFAAS_READY_FD", "port")


class FunctionProcess:
    """Starts ``fprocess``, forwards its output with a prefix, and reports when it exits."""

    def __init__(self, config: WatchdogConfig) -> None:
        if not config.fprocess:
            raise ConfigError("fprocess is not set: name the command that starts the function server")
        self.config = config
        self.upstream_url = config.upstream_url
        self.proc: asyncio.subprocess.Process | None = None
        self.exited = asyncio.Event()
        self.returncode: int | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._waiter: asyncio.Task[None] | None = None

    def _environment(self, env: Mapping[str, str], listen_fd: int | None, port: int | None) -> dict[str, str]:
        child = {k: v for k, v in env.items() if k not in _WATCHDOG_ONLY}
        if listen_fd is not None and port is not None:
            child["STREAMFAAS_LISTEN_FD"] = str(listen_fd)
            child["PORT"] = str(port)
            child["upstream_url"] = self.upstream_url
        child.setdefault("PYTHONUNBUFFERED", "1")
        child["threads"] = str(self.config.threads)
        return child

    async def start(self) -> None:
        argv = shlex.split(self.config.fprocess)
        sock = None
        port: int | None = None
        if not self.upstream_url:
            # The usual case: we own the function server's address and hand it the socket.
            sock = listening_socket()
            port = sock.getsockname()[1]
            self.upstream_url = f"http://127.0.0.1:{port}"
        env = self._environment(os.environ, sock.fileno() if sock else None, port)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                pass_fds=(sock.fileno(),) if sock else (),
                start_new_session=True,
                preexec_fn=lambda: die_with_parent(signal.SIGKILL),
            )
        except OSError as exc:
            raise DeployError(f"cannot start fprocess {argv[0]!r}: {exc.strerror}") from None
        finally:
            if sock is not None:
                sock.close()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(self.proc.stdout, "stdout")),
            asyncio.create_task(self._pump(self.proc.stderr, "stderr")),
        ]
        self._waiter = asyncio.create_task(self._wait())

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        prefix = f"{self.config.function_name}[{self.config.replica_id}] {name}: ".encode()
        out = sys.stdout.buffer
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the reader's limit: pass it on in pieces
                line = await stream.read(65536)
            if not line:
                return
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()).encode()
            out.write(stamp + prefix + line if line.endswith(b"\n") else stamp + prefix + line + b"\n")
            out.flush()

    async def _wait(self) -> None:
        assert self.proc is not None
        self.returncode = await self.proc.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self.exited.set()

    async def wait_ready(self, timeout: float) -> None:
        """Poll the function server until it answers, the process exits, or time runs out."""
        deadline = asyncio.get_running_loop().time() + (timeout or 3600)
        delay = 0.005
        async with aiohttp.ClientSession() as session:
            while True:
                if self.exited.is_set():
                    raise DeployError(f"function process exited with code {self.returncode} before it was ready")
                if await self.answers(session, timeout=2):
                    return
                if asyncio.get_running_loop().time() > deadline:
                    raise DeployError(f"function server did not become ready within {timeout:g}s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)

    async def answers(self, session: aiohttp.ClientSession, timeout: float) -> bool:
        """One health probe of the function server."""
        try:
            async with session.get(self.upstream_url + HEALTH_PATH, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                return r.status < 500
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def stop(self, grace: float = 5.0) -> None:
        if self.proc is None or self.exited.is_set():
            return
        kill_group(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.exited.wait(), grace)
        except TimeoutError:
            kill_group(self.proc.pid, signal.SIGKILL)
            await self.exited.wait()
        if self._waiter is not None:
            await self._waiter
