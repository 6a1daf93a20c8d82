"""The function's own server process (``fprocess``), started and supervised by the watchdog."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import time
from collections import deque
from collections.abc import Callable

import aiohttp

from .._log_cut import CUT_MARK
from .._process import kill_group
from ..config import WatchdogConfig
from ..errors import DeployError
from ..upstream import Pool
from .spawn import Spawned
from .start_report import TAIL_LINES

HEALTH_PATH = "/_/health"


def log_prefix(config: WatchdogConfig, stream_name: str) -> bytes:
    return f"{config.function_name}[{config.replica_id}] {stream_name}: ".encode()


# A function's log file (local provider: every replica appends to one file in the state
# directory) is cut back to its last LOG_KEEP bytes once it passes LOG_MAX: a function writes
# as much as it likes (1.9 GiB in 10 s from one request), on the disk queue.db and the images
# share. Checked every LOG_CHECK bytes a watchdog writes.
LOG_MAX = 64 << 20
LOG_KEEP = 16 << 20
LOG_CHECK = 1 << 20
_written = 0  # since the last check, by every pump of this watchdog (a process per request has its own)


def log_stamp() -> bytes:
    """The time at the start of each line of a function's log (UTC, to the second), as
    ``provider.logs.parse_stamp`` reads it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()


def bound_log(fd: int, most: int = LOG_MAX, keep: int = LOG_KEEP) -> bool:
    """Cut the log file open at ``fd`` (appended to) to its last ``keep`` bytes, from a line's
    start, if it is over ``most``; True if it was. Not a file (a pipe to kubelet): nothing."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size <= most:
            return False
        with open(f"/proc/self/fd/{fd}", "rb") as f:  # the log is open for appending only
            f.seek(st.st_size - keep)
            tail = f.read(keep)
        tail = tail[tail.find(b"\n") + 1 :]
        stamp = log_stamp()
        os.ftruncate(fd, 0)  # another replica's line written meanwhile lands first: misordered, not lost
        os.write(fd, tail + stamp + CUT_MARK + b"%d bytes: older lines were dropped\n" % most)
    except OSError:
        return False
    return True


async def pump_output(stream: asyncio.StreamReader, prefix: bytes, on_line: Callable[[bytes], None] | None = None) -> None:
    """Copy a process's output into the function's log, line by line, stamped and prefixed."""
    global _written
    out = sys.stdout.buffer
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line longer than the reader's limit: pass it on in pieces
            line = await stream.read(65536)
        if not line:
            return
        if on_line is not None:
            on_line(line)
        stamp = log_stamp() + b" "
        # A piece of an over-long line may hold several lines: each gets the stamp and prefix, so
        # a function cannot write a line of its log that looks like the platform's or another
        # replica's.
        pieces = line.split(b"\n")
        if pieces[-1] == b"":
            pieces.pop()
        _written += out.write(b"".join(stamp + prefix + piece + b"\n" for piece in pieces))
        out.flush()
        if _written >= LOG_CHECK:
            _written = 0
            bound_log(out.fileno())


async def pidfd_exited(pidfd: int) -> None:
    """Return once the process of ``pidfd`` has exited (a pidfd turns readable then: no polling,
    no SIGCHLD handler). The pidfd stays open, the caller's to close."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)


async def process_exit(pid: int) -> None:
    """Return once child ``pid`` has exited; it is left unreaped (its id still reserved)."""
    pidfd = os.pidfd_open(pid)
    try:
        await pidfd_exited(pidfd)
    finally:
        os.close(pidfd)


class FunctionProcess:
    """Supervises the function server started by ``spawn_function``: forwards its output with
    a prefix and reports when it exits."""

    def __init__(self, config: WatchdogConfig, spawned: Spawned) -> None:
        self.config = config
        self.spawned = spawned
        self.upstream_url = spawned.upstream_url
        self.exited = asyncio.Event()
        self.returncode: int | None = None
        # The end of its stderr: where a failed start's traceback is, for the start report.
        self.stderr_tail: deque[bytes] = deque(maxlen=TAIL_LINES)
        self._pumps: list[asyncio.Task[None]] = []
        self._waiter: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.spawned.popen.pid

    def connector(self) -> aiohttp.BaseConnector:
        """How to reach the function server: its Unix socket, or the TCP upstream_url."""
        if self.spawned.socket_path is not None:
            return aiohttp.UnixConnector(path=self.spawned.socket_path, limit=0, force_close=False, keepalive_timeout=60)
        return aiohttp.TCPConnector(limit=0, force_close=False, keepalive_timeout=60)

    def pool(self) -> Pool:
        """The connections requests take to the function server (the same address)."""
        return Pool(unix_path=self.spawned.socket_path, keepalive=60)

    async def start(self) -> None:
        """Take over the already running process on this event loop."""
        loop = asyncio.get_running_loop()
        popen = self.spawned.popen
        readers = []
        for pipe in (popen.stdout, popen.stderr):
            assert pipe is not None
            reader = asyncio.StreamReader(limit=1 << 20)
            await loop.connect_read_pipe(lambda r=reader: asyncio.StreamReaderProtocol(r), pipe)  # type: ignore[misc]
            readers.append(reader)
        self._pumps = [
            asyncio.create_task(self._pump(readers[0], "stdout")),
            asyncio.create_task(self._pump(readers[1], "stderr")),
        ]
        self._waiter = asyncio.create_task(self._wait())

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        keep = self.stderr_tail.append if name == "stderr" else None
        await pump_output(stream, log_prefix(self.config, name), keep)

    async def _wait(self) -> None:
        await process_exit(self.pid)
        self.returncode = self.spawned.popen.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self.exited.set()

    async def wait_ready(self, timeout: float) -> None:
        """Poll the function server until it answers, the process exits, or time runs out."""
        deadline = asyncio.get_running_loop().time() + (timeout or 3600)
        delay = 0.005
        async with aiohttp.ClientSession(connector=self.connector()) as session:
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
        try:
            await self._stop(grace)
        finally:
            self.spawned.cleanup()

    async def _stop(self, grace: float) -> None:
        if self.exited.is_set():
            return
        kill_group(self.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.exited.wait(), grace)
        except TimeoutError:
            kill_group(self.pid, signal.SIGKILL)
            await self.exited.wait()
        if self._waiter is not None:
            await self._waiter
