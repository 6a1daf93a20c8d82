"""Process plumbing shared by the watchdog and the local provider."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child (``preexec_fn``): ask Linux to signal us when our parent dies.

    Without this, a gateway or watchdog killed with SIGKILL would leave its replicas running.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        except OSError:
            pass


def listening_socket(host: str = "127.0.0.1", port: int = 0, backlog: int = 4096) -> socket.socket:
    """A bound, listening TCP socket; port 0 picks a free one. Handing the socket itself to a
    child (instead of a port number) leaves no window in which another process takes the port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def kill_group(pid: int, sig: int) -> None:
    """Signal a child's whole process group (it was started with ``start_new_session``)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
