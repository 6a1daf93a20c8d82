"""Process plumbing shared by the watchdog and the local provider."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import sys

_PR_SET_PDEATHSIG = 1
_SOMAXCONN = "/proc/sys/net/core/somaxconn"


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> None:
    """In a child (``preexec_fn``): ask Linux to signal us when our parent dies.

    Without this, a gateway or watchdog killed with SIGKILL would leave its replicas running.
    ``parent``: the pid that forked us, taken before the fork. A parent that died between the
    fork and this call sends nothing (we were reparented already), so then the child ends here,
    before it ``exec``s: a replica stopped while it was starting its function left the sandbox
    running, reparented to init.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        except OSError:
            pass
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command's name (proc(5)'s field 3, the state,
    first: its field N is at index N - 3), or None when the process is gone. The name is in
    parentheses and may hold spaces or ")": the fields are split after its last ")"."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def listen_backlog() -> int:
    """The longest listen queue the system allows (``net.core.somaxconn``): a thousand clients
    connecting at once must wait in the queue, not overflow it (a dropped SYN costs the client a
    1 s retransmit; a full Unix socket queue fails the connect). The kernel caps any larger
    request at this, so asking for it is asking for the most there is."""
    try:
        with open(_SOMAXCONN) as f:
            return max(int(f.read()), 128)
    except (OSError, ValueError):
        return 4096


def listening_socket(host: str = "127.0.0.1", port: int = 0, backlog: int | None = None) -> socket.socket:
    """A bound, listening TCP socket; port 0 picks a free one. Handing the socket itself to a
    child (instead of a port number) leaves no window in which another process takes the port.

    aiohttp's ``SockSite`` calls ``listen`` again with its own ``backlog`` (default 128): pass it
    ``backlog=listen_backlog()`` too."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog or listen_backlog())
    return sock


def raise_open_files_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit and return the soft limit in force.

    Every stream holds two descriptors in the gateway and two in a watchdog; the soft limit is
    often 1,024 where the hard one allows far more. Children inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit still stops at fs.nr_open, and setrlimit refuses more.
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # keep what we have
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_files() -> int:
    """Descriptors this process has open now (Linux; 0 where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own
    except OSError:
        return 0


def kill_group(pid: int, sig: int) -> None:
    """Signal a child's whole process group (it was started with ``start_new_session``)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
