"""Run each function server in a bubblewrap sandbox when ``bwrap`` can be used.

Inside: the system read-only, its own ``/tmp``, no view of the platform's state directory (so
no other function's secrets or images), its own PID namespace (no other process's
``/proc/PID/environ``), and its secrets bound read-only at ``/var/openfaas/secrets``.
Without bwrap, the function gets ``STREAMFAAS_SECRETS_DIR`` instead, and a warning is logged once.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

SECRETS_MOUNT = "/var/openfaas/secrets"
# Top-level folders that get a fresh, empty view instead of the host's.
_FRESH = {"proc", "dev", "tmp", "var", "run", "sys"}


@functools.cache
def bwrap_path() -> str | None:
    """bwrap's path if it exists *and* works here (user namespaces may be refused)."""
    path = shutil.which("bwrap")
    if path is None:
        return None
    try:
        probe = subprocess.run(
            [path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid", "true"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if probe.returncode == 0 else None


_warned = False


def warn_unsandboxed() -> None:
    global _warned
    if not _warned:
        _warned = True
        print(
            "streamfaas: bubblewrap (bwrap) is not usable here; functions run without a sandbox and "
            "read their secrets from $STREAMFAAS_SECRETS_DIR instead of /var/openfaas/secrets",
            file=sys.stderr,
            flush=True,
        )


def _python_paths() -> list[str]:
    import sysconfig

    paths = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib"))
    existing = sorted(p for p in paths if os.path.isdir(p))
    # Binding a folder already covers what lies below it.
    return [p for p in existing if not any(p != q and p.startswith(q + os.sep) for q in existing)]


def sandboxed_fprocess(
    fprocess: str, *, bwrap: str, state_dir: Path, image_dir: Path, venv_dir: Path, secrets_dir: Path
) -> str:
    """The fprocess command wrapped in bwrap; it names paths only, never a secret's value."""
    args = [bwrap]
    for entry in sorted(os.listdir("/")):
        path = "/" + entry
        if entry in _FRESH:
            continue
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/var", "--tmpfs", "/run"]
    if os.path.isdir("/sys"):
        args += ["--ro-bind", "/sys", "/sys"]
    # The platform's Python (the venv's .pth points at its packages) may live under /tmp or
    # /var, which were just replaced: show it again, read-only.
    for path in _python_paths():
        args += ["--ro-bind", path, path]
    # Hide the whole state directory, then show this function only what it runs from.
    args += ["--tmpfs", str(state_dir)]
    args += ["--ro-bind", str(image_dir), str(image_dir), "--ro-bind", str(venv_dir), str(venv_dir)]
    args += ["--ro-bind", str(secrets_dir), SECRETS_MOUNT]
    args += ["--unshare-pid", "--die-with-parent", "--chdir", str(image_dir), "--"]
    return shlex.join(args) + " " + fprocess
