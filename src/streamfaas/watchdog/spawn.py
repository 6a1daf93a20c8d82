"""Start the function server (``fprocess``) before anything heavy is imported.

The watchdog's own start-up (aiohttp, uvloop) then overlaps with the function's (Flask), which
is most of a cold start. Only the standard library is used here.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from .._process import die_with_parent, listening_socket
from ..config import WatchdogConfig
from ..errors import ConfigError, DeployError

# Settings meant for the watchdog, not for the function.
_WATCHDOG_ONLY = ("STREAMFAAS_LISTEN_FD", "STREAMFAAS_READY_FD", "port")


@dataclass
class Spawned:
    popen: subprocess.Popen[bytes]
    upstream_url: str


def _environment(env: Mapping[str, str], config: WatchdogConfig, listen_fd: int | None, port: int | None, url: str) -> dict[str, str]:
    child = {k: v for k, v in env.items() if k not in _WATCHDOG_ONLY}
    if listen_fd is not None and port is not None:
        child["STREAMFAAS_LISTEN_FD"] = str(listen_fd)
        child["PORT"] = str(port)
        child["upstream_url"] = url
    child.setdefault("PYTHONUNBUFFERED", "1")
    child["threads"] = str(config.threads)
    return child


def spawn_function(config: WatchdogConfig, env: Mapping[str, str]) -> Spawned:
    """Start ``fprocess`` in its own process group, its output on pipes, killed if we die."""
    if not config.fprocess:
        raise ConfigError("fprocess is not set: name the command that starts the function server")
    argv = shlex.split(config.fprocess)
    sock = None
    port: int | None = None
    url = config.upstream_url
    if not url:
        # The usual case: we own the function server's address and hand it the socket.
        sock = listening_socket()
        port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_environment(env, config, sock.fileno() if sock else None, port, url),
            pass_fds=(sock.fileno(),) if sock else (),
            start_new_session=True,
            preexec_fn=lambda: die_with_parent(signal.SIGKILL),
        )
    except OSError as exc:
        raise DeployError(f"cannot start fprocess {argv[0]!r}: {exc.strerror}") from None
    finally:
        if sock is not None:
            sock.close()
    os.set_blocking(popen.stdout.fileno(), False)  # type: ignore[union-attr]
    os.set_blocking(popen.stderr.fileno(), False)  # type: ignore[union-attr]
    return Spawned(popen, url)
