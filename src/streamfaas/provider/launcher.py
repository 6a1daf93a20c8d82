"""Starting a replica's watchdog: forked by the gateway's fork server
(``watchdog/fork_server.py``), or spawned as ``python -I -m streamfaas.watchdog`` when the
fork server is not there. Either way the replica gets a ``WatchdogProcess``: its pid (a session
leader, so ``kill_group(pid)`` reaches its function too) and its exit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from .._process import die_with_parent

FORK_SERVER_START_TIMEOUT = 30.0
EXIT_CODE_WAIT = 5.0  # after the pidfd said "exited": how long the server may take to report the code


class ForkServerUnavailable(Exception):
    """The fork server is gone or refused; the caller spawns directly."""


class WatchdogProcess(Protocol):
    pid: int

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int | None: ...

    def send_signal(self, sig: int) -> None:
        """Signal this process alone (its group may not exist yet: see ``Replica.stop``)."""


class ForkedWatchdog:
    """A watchdog forked by the fork server. Its exit is seen on a pidfd, which names this
    process only and works after the fork server is gone; the code comes from the server."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._exited = asyncio.Event()
        self._code: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._pidfd = pidfd
        asyncio.get_running_loop().add_reader(pidfd, self._on_exit)

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._exited.set()

    def send_signal(self, sig: int) -> None:
        if not self._exited.is_set():  # the pidfd names this process only, never a reused pid
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def set_code(self, code: int | None) -> None:
        if not self._code.done():
            self._code.set_result(code)

    @property
    def returncode(self) -> int | None:
        if not self._exited.is_set():
            return None
        return self._code.result() if self._code.done() else -1

    async def wait(self) -> int | None:
        await self._exited.wait()
        try:
            return await asyncio.wait_for(asyncio.shield(self._code), EXIT_CODE_WAIT)
        except TimeoutError:
            return None


class ForkServer:
    """The provider's end of the fork server: starts it, asks it for watchdogs, and restarts
    it when it has died (one attempt per request; the caller falls back to a direct spawn)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)  # the platform's fixed watchdog environment: never a function's
        self.proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._pending: collections.deque[asyncio.Future[ForkedWatchdog]] = collections.deque()
        self._children: dict[int, ForkedWatchdog] = {}
        self._lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self._sock is not None

    async def start(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        gateway = os.getpid()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-m", "streamfaas.watchdog.fork_server", str(theirs.fileno()),
                env=self.env, cwd="/", stdin=asyncio.subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                start_new_session=True, preexec_fn=lambda: die_with_parent(signal.SIGKILL, gateway),
            )
        except OSError:
            mine.close()
            raise ForkServerUnavailable("cannot start the fork server") from None
        finally:
            theirs.close()
        mine.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(loop.sock_recv(mine, 4096), FORK_SERVER_START_TIMEOUT)
        except (TimeoutError, OSError):
            data = b""
        if not data or json.loads(data).get("ready") is not True:
            mine.close()
            await self._reap_server()
            raise ForkServerUnavailable("the fork server did not start")
        self._sock = mine
        loop.add_reader(mine.fileno(), self._on_message)

    def _on_message(self) -> None:
        assert self._sock is not None
        try:
            data, fds, _flags, _addr = socket.recv_fds(self._sock, 4096, 1)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            self._lost()
            return
        message: dict[str, Any] = json.loads(data)
        if "exit" in message:
            child = self._children.pop(message["exit"], None)
            if child is not None:
                child.set_code(message["code"])
            return
        waiter = self._pending.popleft()
        if "pid" in message and fds and waiter.cancelled():  # its replica stopped meanwhile
            signal.pidfd_send_signal(fds[0], signal.SIGKILL)
            os.close(fds[0])
        elif "pid" in message and fds:
            child = ForkedWatchdog(message["pid"], fds[0])
            self._children[child.pid] = child
            waiter.set_result(child)
        else:
            for fd in fds:
                os.close(fd)
            if not waiter.cancelled():
                waiter.set_exception(ForkServerUnavailable(message.get("error", "no pid")))

    def _lost(self, *, reap: bool = True) -> None:
        """The server is gone: its children get SIGTERM (their parent-death signal) and their
        pidfds still report their exits; their codes are unknown."""
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        while self._pending:
            waiter = self._pending.popleft()
            if not waiter.cancelled():
                waiter.set_exception(ForkServerUnavailable("the fork server is gone"))
        for child in self._children.values():
            child.set_code(None)
        self._children.clear()
        if reap:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_server())

    async def _reap_server(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()

    async def spawn(self, env: Mapping[str, str], cwd: Path, listen: int, ready: int, log: int) -> ForkedWatchdog:
        async with self._lock:
            if self._sock is None:
                if self._reaper is not None:
                    await self._reaper
                await self._reap_server()
                await self.start()
        assert self._sock is not None
        data = json.dumps({"env": dict(env), "cwd": str(cwd)}).encode()
        waiter: asyncio.Future[ForkedWatchdog] = asyncio.get_running_loop().create_future()
        try:
            socket.send_fds(self._sock, [data], [listen, ready, log])
        except OSError as exc:
            raise ForkServerUnavailable(f"cannot reach the fork server: {exc.strerror}") from None
        self._pending.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            # Cancelled after the reply came but before this resumed (its replica was stopped
            # meanwhile): nobody else will ever stop that watchdog. A reply still to come is
            # handled in _on_message (the waiter is cancelled).
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                waiter.result().send_signal(signal.SIGTERM)  # it drains and stops its function
            raise

    async def close(self) -> None:
        """Close our end: the server exits (its watchdogs were stopped before)."""
        if self._sock is not None:
            self._lost(reap=False)
        if self._reaper is not None:
            await self._reaper
        if self.proc is not None:
            proc, self.proc = self.proc, None
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def spawn_direct(env: Mapping[str, str], cwd: Path, listen: int, ready: int, log: int) -> asyncio.subprocess.Process:
    """``python -I -m streamfaas.watchdog``: -I ignores PYTHON* variables, the user site and
    the working directory (the function's image); its environment is the platform's anyway."""
    gateway = os.getpid()
    return await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-m", "streamfaas.watchdog",
        cwd=cwd, env={**env, "STREAMFAAS_LISTEN_FD": str(listen), "STREAMFAAS_READY_FD": str(ready)},
        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        pass_fds=(listen, ready), start_new_session=True, preexec_fn=lambda: die_with_parent(signal.SIGTERM, gateway),
    )
