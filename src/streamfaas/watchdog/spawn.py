"""Start the function server (``fprocess``) before anything heavy is imported, or, in the
per-request modes, the command that each request starts.

The watchdog's own start-up (aiohttp, uvloop) then overlaps with the function's (Flask), which
is most of a cold start. Only the standard library is used here.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from .._process import die_with_parent, listen_backlog
from ..config import WatchdogConfig
from ..errors import ConfigError, DeployError
from ..sandbox import SandboxSpec, sandbox_command, spec_from_env

# Where the provider wants the function server's socket (a folder of its own).
FUNCTION_SOCKET = "STREAMFAAS_FUNCTION_SOCKET"
# Settings meant for the watchdog, not for the function.
_WATCHDOG_ONLY = ("STREAMFAAS_LISTEN_FD", "STREAMFAAS_READY_FD", "port", "STREAMFAAS_WATCHDOG_HOST")


@dataclass
class Spawned:
    popen: subprocess.Popen[bytes]
    upstream_url: str
    socket_path: str | None = None  # the function server's Unix socket, when we made it
    socket_dir: str | None = None  # the folder we made for it (none when the provider named it)

    def cleanup(self) -> None:
        _remove_socket(self.socket_path, self.socket_dir)


def _remove_socket(path: str | None, folder: str | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
    elif path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _environment(env: Mapping[str, str], config: WatchdogConfig, listen_fd: int | None) -> dict[str, str]:
    child = {k: v for k, v in env.items() if k not in _WATCHDOG_ONLY}
    if listen_fd is not None:
        child["STREAMFAAS_LISTEN_FD"] = str(listen_fd)
    child.setdefault("PYTHONUNBUFFERED", "1")
    child["threads"] = str(config.threads)
    child["STREAMFAAS_FUNCTION"] = config.function_name  # the function's own name, set by the platform
    return child


def _function_socket(path: str | None) -> tuple[socket.socket, str, str | None]:
    """A listening Unix socket in a folder only we can enter (the provider's, or one we make):
    no other function, nor anything that merely shares this machine's loopback, can reach the
    function server around us. Returns the socket, its path and the folder we made."""
    folder = None
    if path is None:
        folder = tempfile.mkdtemp(prefix="streamfaas-fn-")
        path = os.path.join(folder, "fn.sock")
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by this replica's previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(listen_backlog())  # the function server may listen again (waitress: its `backlog`)
    except OSError:
        sock.close()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return sock, path, folder


def _start_function_process(
    argv: list[str], env: Mapping[str, str], spec: SandboxSpec | None, *, stdin: int, keep_fds: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start a function's process (sandboxed when ``spec`` says so) in a new process group, its
    output on pipes, killed if the watchdog dies."""
    extra_fds: list[int] = []
    if spec is not None:
        # The sandbox applies the function's environment itself, after dropping privileges;
        # bwrap and setpriv run with none of it.
        argv, extra_fds = sandbox_command(spec, argv, env)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    parent = os.getpid()
    try:
        return subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            pass_fds=keep_fds + tuple(extra_fds),
            start_new_session=True,
            preexec_fn=lambda: die_with_parent(signal.SIGKILL, parent),
        )
    except OSError as exc:
        raise DeployError(f"cannot start fprocess {argv[0]!r}: {exc.strerror}") from None
    finally:
        for fd in extra_fds:
            os.close(fd)


def spawn_function(config: WatchdogConfig, env: Mapping[str, str], settings: Mapping[str, str] | None = None) -> Spawned:
    """Start ``fprocess`` in its own process group (sandboxed when the provider says so), its
    output on pipes, killed if we die."""
    if not config.fprocess:
        raise ConfigError("fprocess is not set: name the command that starts the function server")
    argv = shlex.split(config.fprocess)
    if not argv:
        raise ConfigError("fprocess is empty: name the command that starts the function server")
    sock = None
    socket_path = socket_dir = None
    url = config.upstream_url
    if not url:
        # The usual case: we own the function server's address and hand it the socket.
        sock, socket_path, socket_dir = _function_socket((settings or {}).get(FUNCTION_SOCKET))
        url = "http://localhost"
    child_env = _environment(env, config, sock.fileno() if sock else None)
    try:
        popen = _start_function_process(argv, child_env, spec_from_env(settings or {}), stdin=subprocess.DEVNULL,
                                        keep_fds=(sock.fileno(),) if sock else ())
    except DeployError:
        _remove_socket(socket_path, socket_dir)
        raise
    finally:
        if sock is not None:
            sock.close()
    os.set_blocking(popen.stdout.fileno(), False)  # type: ignore[union-attr]
    os.set_blocking(popen.stderr.fileno(), False)  # type: ignore[union-attr]
    return Spawned(popen, url, socket_path, socket_dir)


@dataclass(frozen=True)
class RequestCommand:
    """``fprocess`` as the streaming and serializing modes run it: once per request, sandboxed
    exactly as the HTTP mode's function server is, with the function's environment plus the
    request's CGI variables (applied inside the sandbox, never to the watchdog)."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    sandbox: SandboxSpec | None

    def start(self, request_env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """Start one process in a new process group, its stdio on pipes, killed if we die.

        Called on the event loop's thread: the kernel's parent-death signal follows the thread
        that forked, so a worker thread's exit would kill the process.
        """
        popen = _start_function_process(list(self.argv), {**self.env, **request_env}, self.sandbox, stdin=subprocess.PIPE)
        for pipe in (popen.stdin, popen.stdout, popen.stderr):
            os.set_blocking(pipe.fileno(), False)  # type: ignore[union-attr]
        return popen


def request_command(config: WatchdogConfig, env: Mapping[str, str], settings: Mapping[str, str] | None = None) -> RequestCommand:
    """The per-request command of the streaming and serializing modes; no process starts yet."""
    argv = shlex.split(config.fprocess) if config.fprocess else []
    if not argv:
        raise ConfigError(f"fprocess is not set: name the command that each request runs in {config.mode} mode")
    child = {k: v for k, v in env.items() if k not in _WATCHDOG_ONLY}
    child.setdefault("PYTHONUNBUFFERED", "1")  # a Python command's prints then stream as written
    return RequestCommand(tuple(argv), child, spec_from_env(settings or {}))
