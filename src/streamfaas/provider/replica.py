"""One replica of a function: a watchdog process (which runs the function server), supervised.

A replica that exits on its own is restarted with exponential backoff; one that stays up for a
while is considered healthy again and its backoff resets. A start that fails leaves its reason
in ``error`` (the watchdog's start report: its reason, then the end of the function's
traceback), until a later start succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from .._process import kill_group, listen_backlog, proc_stat
from ..proxy import client_session
from ..upstream import Pool
from ..watchdog.function_process import log_stamp
from ..watchdog.start_report import FAILED, READY, REPORT_LIMIT
from .launcher import ForkServer, ForkServerUnavailable, WatchdogProcess, spawn_direct

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0
_FRAME = re.compile(r'\s*File "([^"]*)", line (\d+)')


def _raised_at(lines: list[str]) -> str:
    """`` (FILE, line N)``: where a traceback's innermost frame is; "" without one."""
    frames = [m for m in map(_FRAME.match, lines) if m]
    return f" ({frames[-1].group(1)}, line {frames[-1].group(2)})" if frames else ""


def error_summary(error: str) -> str:
    """One line from a start report: its last line (the exception), and where it was raised."""
    lines = [line for line in error.splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1].strip() + _raised_at(lines)


_EXCEPTION = re.compile(r"([A-Za-z_]\w*\.)*[A-Z]\w*")  # a class name: RuntimeError, json.JSONDecodeError


def error_kind(error: str) -> str:
    """What a caller (anyone, for a public function) is told of a start failure: the exception's
    type and where it was raised, never its message, which may quote a secret the function read
    (``int(api_key)``). The whole line is the admin's (``startError``, describe, logs)."""
    lines = [line for line in error.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    head = last.split(":", 1)[0].strip() if ":" in last else ""
    kind = head if head and _EXCEPTION.fullmatch(head) else "its server exited"
    return kind + _raised_at(lines)


_TICKS = os.sysconf("SC_CLK_TCK")


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from ``/proc/PID/task/*/children``."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue  # gone meanwhile
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system time of a process and of its reaped children."""
    fields = proc_stat(pid)
    if fields is None:
        return 0.0
    # Fields 14-17 of proc(5): utime, stime, cutime, cstime.
    return sum(int(v) for v in fields[11:15]) / _TICKS


@dataclass(frozen=True)
class ReplicaSpec:
    env: Mapping[str, str]  # the watchdog's own, fixed environment (the function's is inside it as JSON)
    cwd: Path
    log: Path
    drain_timeout: float = 30.0
    fork_server: ForkServer | None = None  # forks the watchdog; None: spawned directly


def unix_listening_socket(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)  # left by this replica's previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(listen_backlog())  # the watchdog's SockSite listens again with the same
    except OSError:
        sock.close()
        raise
    return sock


class Replica:
    """``socket_path`` is where its watchdog listens: a Unix socket in a folder only the
    platform can enter, so no function reaches another function's replica around the gateway."""

    def __init__(self, function: str, replica_id: str, spec: ReplicaSpec, socket_path: Path) -> None:
        self.function = function
        self.id = replica_id
        self.spec = spec
        self.socket_path = socket_path
        self.url = "http://localhost"
        # Every stream to this replica holds one of its connections for its whole life.
        self.session: aiohttp.ClientSession = client_session(aiohttp.UnixConnector(path=str(socket_path), limit=0, keepalive_timeout=30))
        self.pool = Pool(unix_path=str(socket_path), keepalive=30)
        self.ready = asyncio.Event()
        self.failed = asyncio.Event()  # set when a start attempt did not become ready; cleared when one does
        self.error = ""  # why the last start attempt failed (multi-line); "" once one succeeds
        self._inflight = 0
        # Called when a request on it ends (see ``inflight``): its record wakes requests that
        # wait for a free slot, and a drain waits for the last stream to finish.
        self.on_release: Callable[[Replica], None] | None = None
        # Called when it becomes ready or fails a start: its record wakes waiting requests.
        self.on_change: Callable[[Replica], None] | None = None
        # Picked for scale-down: no new requests; stopped once idle or after drain_timeout.
        self.draining = False
        self.restarts = 0
        self.pid: int | None = None
        self._stopping = False
        self._proc: WatchdogProcess | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def inflight(self) -> int:
        """Requests the gateway has open on it (a stream holds one for its whole life)."""
        return self._inflight

    @inflight.setter
    def inflight(self, value: int) -> None:
        released = value < self._inflight
        self._inflight = value
        if released and self.on_release is not None:
            self.on_release(self)

    def cpu_seconds(self) -> float:
        """CPU time its processes (the watchdog and everything below it) have used; those
        that exited already are not counted (their parents reaped them: their time moved to
        the parent's children's time, which is counted)."""
        if self.pid is None:
            return 0.0
        return sum(_cpu_seconds(pid) for pid in _process_tree(self.pid))

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"replica {self.function}/{self.id}")

    def _note(self, text: str) -> None:
        stamp = log_stamp().decode()
        with open(self.spec.log, "a") as log:
            log.write(f"{stamp} {self.function}[{self.id}] streamfaas: {text}\n")

    async def _supervise(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping:
            started = time.monotonic()
            code = await self._run_once()
            if self._stopping:
                return
            self.restarts += 1
            if time.monotonic() - started > STABLE_AFTER:
                backoff = BACKOFF_FIRST
            self._note(f"replica exited with code {code}; restarting in {backoff:.1f}s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _run_once(self) -> int | None:
        try:
            sock = unix_listening_socket(self.socket_path)
        except OSError as exc:
            self._start_failed(f"cannot listen on {self.socket_path}: {exc.strerror}")
            return None
        ready_r, ready_w = os.pipe()
        env = dict(self.spec.env)
        env["STREAMFAAS_REPLICA"] = self.id
        env["STREAMFAAS_FUNCTION_SOCKET"] = str(self.socket_path.with_suffix(".fn.sock"))
        self.spec.log.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.spec.log, "ab")  # noqa: SIM115 - the child holds it; closed below
        try:
            self._proc = await self._launch(env, sock.fileno(), ready_w, log.fileno())
        except OSError as exc:
            self._start_failed(f"cannot start watchdog: {exc.strerror}")
            os.close(ready_r)
            return None
        finally:
            sock.close()
            os.close(ready_w)
            log.close()
        self.pid = self._proc.pid
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(ready_r, "rb", buffering=0)
        )
        try:
            # The watchdog writes READY once its function answers, or FAILED and why it did not
            # start (watchdog/start_report.py); EOF alone means it died without a word.
            first = await reader.read(1)
            report = b"" if first == READY else await reader.read(-1)
        finally:
            transport.close()
        if first == READY:
            self.error = ""
            self.failed.clear()
            self.ready.set()
            if self.on_change is not None:
                self.on_change(self)
            code = await self._proc.wait()
            self.ready.clear()
            return code
        code = await self._proc.wait()
        text = report[:REPORT_LIMIT].decode(errors="replace").strip() if first == FAILED else ""
        self._start_failed(text or f"the watchdog exited with code {code} before it was ready", note=False)
        return code

    async def _launch(self, env: dict[str, str], listen: int, ready: int, log: int) -> WatchdogProcess:
        """Forked by the fork server when there is one; spawned directly when it is gone and
        cannot be restarted."""
        fork_server = self.spec.fork_server
        if fork_server is not None:
            try:
                return await fork_server.spawn(env, self.spec.cwd, listen, ready, log)
            except ForkServerUnavailable as exc:
                self._note(f"{exc}; starting the watchdog directly")
        return await spawn_direct(env, self.spec.cwd, listen, ready, log)

    def _start_failed(self, error: str, *, note: bool = True) -> None:
        if note:  # the watchdog logs its own failures; the provider's are noted here
            self._note(error)
        self.error = error
        self.failed.set()
        if self.on_change is not None:
            self.on_change(self)

    async def stop(self) -> None:
        """Drain and stop: the caller has already taken this replica out of rotation."""
        self._stopping = True
        self.ready.clear()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            kill_group(proc.pid, signal.SIGTERM)
            # A watchdog forked a moment ago may not have its own process group yet (setsid
            # comes first thing in the child, but after the fork server reported its pid):
            # signal the process too, or the SIGTERM is lost and the stop waits out the drain.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.spec.drain_timeout + 5)
            except TimeoutError:
                kill_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.session.close()
        self.pool.close()
        self.socket_path.unlink(missing_ok=True)
        self.socket_path.with_suffix(".fn.sock").unlink(missing_ok=True)
