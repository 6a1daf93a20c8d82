"""The watchdog fork server: one process per gateway that imports the watchdog's modules once
and forks one watchdog per replica, so replicas share those pages (a few MiB private each
instead of ~24) and a cold start skips the import.

The local provider starts it with ``python -I`` and the platform's fixed environment, owns it
and stops it; it dies with the gateway. It never applies a function's environment to itself:
each request's environment (the watchdog's, which carries the function's as JSON) is set in
the forked child only, which then is exactly the watchdog a direct spawn would have started.

Protocol, over a ``SOCK_SEQPACKET`` socketpair (one JSON record per message):

- provider → server: ``{"env": {...}, "cwd": "..."}`` with three descriptors (SCM_RIGHTS):
  the listening socket, the ready pipe, the log file;
- server → provider: ``{"ready": true}`` once the imports are done; per request, in order,
  ``{"pid": N}`` with a pidfd of the child, or ``{"error": "..."}``; later, when a child has
  been reaped, ``{"exit": N, "code": C}`` (negative: killed by signal -C).

It forks only from this single-threaded loop: no event loop runs here, no thread is started.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import resource
import select
import signal
import socket
import sys
import traceback
from typing import Any

MAX_MESSAGE = 1 << 20
# Where a child finds its descriptors (the watchdog reads the numbers from its environment).
LISTEN_FD, READY_FD = 3, 4
_NO_CA = {"SSL_CERT_FILE": os.devnull, "SSL_CERT_DIR": os.devnull}


def _preload() -> None:
    """Import what every watchdog imports, then freeze it: forked children share these pages
    and the collector never touches (so never copies) them.

    aiohttp builds its default TLS contexts at import, loading the system's CA certificates:
    about 2 MiB in every watchdog, which never opens a TLS connection (its peers are the
    gateway and its own function, on local sockets). With no CA file or folder to read, those
    contexts hold none: a verification tried anyway fails, it cannot pass. The variables are
    gone again before any child is forked, so no function ever sees them."""
    import asyncio  # noqa: F401

    saved = {k: os.environ.get(k) for k in _NO_CA}
    os.environ.update(_NO_CA)
    try:
        import aiohttp  # noqa: F401
        import aiohttp.web  # noqa: F401
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    import uvloop  # noqa: F401

    from . import server, spawn, static  # noqa: F401

    gc.collect()
    gc.freeze()


def _send(control: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(control, [data], fds)
    else:
        control.send(data)


def _child(server_pid: int, closing: list[int], fds: list[int], env: dict[str, str], cwd: str) -> int:
    """In the forked child: become a watchdog, as ``python -I -m streamfaas.watchdog`` would."""
    from .._process import die_with_parent

    os.setsid()  # its own session, so the provider's kill_group(pid) reaches its function too
    die_with_parent(signal.SIGTERM, server_pid)  # exits here if the server is gone already
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in closing:
        os.close(fd)
    # Raise the three above the targets first, so no dup2 overwrites one still to be moved.
    listen, ready, log = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds)
    devnull = os.open(os.devnull, os.O_RDONLY)
    for source, target in ((devnull, 0), (log, 1), (log, 2), (listen, LISTEN_FD), (ready, READY_FD)):
        os.dup2(source, target)
    os.closerange(READY_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])  # close_range(2)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    os.environ["STREAMFAAS_LISTEN_FD"] = str(LISTEN_FD)
    os.environ["STREAMFAAS_READY_FD"] = str(READY_FD)
    from . import main

    return main()


def _fork(control: socket.socket, wakeup: tuple[int, int], request: dict[str, Any], fds: list[int]) -> None:
    if len(fds) != 3 or not isinstance(request.get("env"), dict) or not isinstance(request.get("cwd"), str):
        for fd in fds:
            os.close(fd)
        _send(control, {"error": "bad request"})
        return
    env = {str(k): str(v) for k, v in request["env"].items()}
    if "threading" in sys.modules and sys.modules["threading"].active_count() != 1:
        raise RuntimeError("the fork server must never fork with threads running")
    sys.stdout.flush()
    sys.stderr.flush()
    server_pid = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        _send(control, {"error": f"fork: {exc.strerror}"})
        return
    if pid == 0:
        code = 1
        try:
            code = _child(server_pid, [control.fileno(), *wakeup], fds, env, request["cwd"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    # A pidfd taken before the child can be reaped names it and nothing else, ever; the
    # provider polls it for the exit (even if this server is gone by then).
    pidfd = os.pidfd_open(pid)
    try:
        _send(control, {"pid": pid}, [pidfd])
    finally:
        os.close(pidfd)


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(control, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def serve(control: socket.socket) -> int:
    wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select through the pipe
    _send(control, {"ready": True})
    try:
        while True:
            readable, _, _ = select.select([control.fileno(), wakeup_r], [], [])
            if wakeup_r in readable:
                while True:
                    try:
                        os.read(wakeup_r, 512)
                    except BlockingIOError:
                        break
                _reap(control)
            if control.fileno() in readable:
                data, fds, _flags, _addr = socket.recv_fds(control, MAX_MESSAGE, 3)
                if not data:  # the provider closed its end (or is gone): stop
                    return 0
                try:
                    request = json.loads(data)
                except ValueError:
                    request = {}
                _fork(control, (wakeup_r, wakeup_w), request, fds)
    except (BrokenPipeError, ConnectionResetError):
        return 0


def run(argv: list[str]) -> int:
    control = socket.socket(fileno=int(argv[0]))
    _preload()
    return serve(control)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
