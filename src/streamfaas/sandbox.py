"""The function sandbox (bubblewrap): what a function sees, and the command that starts it.

A function is untrusted code. Inside its sandbox it sees only what it needs: ``/usr`` and the
library symlinks, a few files of ``/etc`` (certificates, name resolution, users), the Python
runtime and the platform's site-packages (read-only), its own venv and image (read-only), its
own secrets at ``/var/openfaas/secrets`` (read-only), an empty private ``/tmp``, and its own
PID, IPC and UTS namespaces. No home folder, no state directory, no ``/srv``, ``/opt``,
``/mnt``, ``/work``, ``/run`` or ``/var``.

It never holds a capability and never runs as root:

- **gateway as root**: bwrap builds the mounts as root, then ``setpriv`` drops to the
  function's own unprivileged uid (no groups, empty bounding set, ``no_new_privs``) and a
  second bwrap puts it in a user namespace with every capability dropped and user namespaces
  disabled. Its secrets are files owned by that uid, mode 0400.
- **gateway as a normal user**: one bwrap, in an unprivileged user namespace, same uid as the
  gateway, every capability dropped, user namespaces disabled inside.

An OCI image (``provider/oci_rootfs.py``) is shown differently: its unpacked rootfs is the
function's ``/`` (read-only), with ``/proc``, a minimal ``/dev``, an empty ``/tmp`` and its secrets
mounted on top, and nothing of the host. For a root gateway the outer bwrap keeps the host's
system view (setpriv and the inner bwrap run from it) and holds the rootfs at ``ROOTFS_STAGE``;
the inner bwrap, already unprivileged, makes that its ``/``.

The function's environment (``envVars``) is applied by the last bwrap, right before the
function itself: no process that runs with more rights (bwrap as root, setpriv) ever sees
``LD_PRELOAD``, ``PYTHONPATH`` and the like. Arguments travel through memfds (``--args``), so
the environment is not in the process list either.

Only the standard library is used here: the watchdog imports this before anything heavy.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SECRETS_MOUNT = "/var/openfaas/secrets"
# Where a root gateway's outer sandbox holds an OCI rootfs before the inner one pivots into it.
ROOTFS_STAGE = "/.streamfaas-rootfs"
# What an OCI rootfs must hold as real directories (not links) before it is mounted on: bwrap
# creates and mounts these paths, following links, while it still sees the host
# (``oci_rootfs.py`` makes them at unpack).
ROOTFS_MOUNT_POINTS = ("proc", "dev", "tmp", "var", "var/openfaas", "var/openfaas/secrets")
# Functions of a root gateway run as uid/gid FUNCTION_UID_BASE + (crc32(name) % FUNCTION_UID_SPAN):
# far above any distribution's user range, stable across restarts, one per function.
FUNCTION_UID_BASE = 1_000_000
FUNCTION_UID_SPAN = 1_000_000
# Files of /etc a function may need (TLS, name resolution, users, time zone, the loader).
_ETC = (
    "ssl", "ca-certificates", "ca-certificates.conf", "pki", "crypto-policies", "resolv.conf", "hosts",
    "host.conf", "nsswitch.conf", "gai.conf", "services", "protocols", "passwd", "group", "localtime",
    "timezone", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "mime.types", "os-release",
)
_SPEC_ENV = "STREAMFAAS_SANDBOX"


def function_uid(name: str) -> int:
    return FUNCTION_UID_BASE + zlib.crc32(name.encode()) % FUNCTION_UID_SPAN


@dataclass(frozen=True)
class SandboxSpec:
    """What one function's sandbox shows it; built by the provider, run by the watchdog."""

    bwrap: str
    binds: tuple[tuple[str, str], ...]  # read-only (source, destination) pairs
    chdir: str
    uid: int | None = None  # set when the platform runs as root: drop to this uid
    setpriv: str = ""
    symlinks: tuple[tuple[str, str], ...] = field(default=())  # (target, link)
    root: str = ""  # an OCI image's rootfs on the host: the function's / (empty: the system view)
    # Read-write binds (same path inside): only a venv being built (``build_install_spec``).
    writable: tuple[str, ...] = field(default=())

    def to_json(self) -> str:
        return json.dumps({
            "bwrap": self.bwrap, "binds": self.binds, "chdir": self.chdir, "uid": self.uid,
            "setpriv": self.setpriv, "symlinks": self.symlinks, "root": self.root, "writable": self.writable,
        })

    @classmethod
    def from_json(cls, text: str) -> SandboxSpec:
        data = json.loads(text)
        return cls(
            bwrap=str(data["bwrap"]),
            binds=tuple((str(s), str(d)) for s, d in data["binds"]),
            chdir=str(data["chdir"]),
            uid=None if data.get("uid") is None else int(data["uid"]),
            setpriv=str(data.get("setpriv", "")),
            symlinks=tuple((str(t), str(link)) for t, link in data.get("symlinks", ())),
            root=str(data.get("root", "")),
            writable=tuple(str(w) for w in data.get("writable", ())),
        )


def spec_from_env(env: Mapping[str, str]) -> SandboxSpec | None:
    raw = env.get(_SPEC_ENV)
    return SandboxSpec.from_json(raw) if raw else None


def spec_env(spec: SandboxSpec) -> dict[str, str]:
    return {_SPEC_ENV: spec.to_json()}


# ---- building a spec (provider side) -----------------------------------------------------------
def _system_view() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Binds and symlinks for the system part: /usr, the /bin-/lib links, some of /etc, Python."""
    binds: list[tuple[str, str]] = [("/usr", "/usr")]
    links: list[tuple[str, str]] = []
    for entry in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + entry
        if os.path.islink(path):
            links.append((os.readlink(path), path))
        elif os.path.isdir(path):
            binds.append((path, path))
    for entry in _ETC:
        path = "/etc/" + entry
        if os.path.exists(path):
            binds.append((os.path.realpath(path) if not os.path.isdir(path) else path, path))
    for var in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        value = os.environ.get(var)
        if value and os.path.exists(value):
            binds.append((value, value))
    binds += [(p, p) for p in _python_paths()]
    return binds, links


def _python_paths() -> list[str]:
    """The Python runtime and the platform's site-packages (Flask and waitress for functions)."""
    paths = sysconfig.get_paths()
    wanted = {sys.base_prefix, paths["stdlib"], paths["platstdlib"], paths["purelib"], paths["platlib"],
              os.path.dirname(os.path.realpath(sys.executable))}
    existing = sorted(os.path.realpath(p) for p in wanted if os.path.isdir(p))
    # Binding a folder already covers what lies below it; /usr is bound anyway.
    covered = [p for p in existing if not any(p != q and p.startswith(q + os.sep) for q in existing)]
    return [p for p in covered if p != "/usr" and not p.startswith("/usr/")]


def build_spec(*, bwrap: str, image_dir: Path, venv_dir: Path, secrets_dir: Path, uid: int | None) -> SandboxSpec:
    binds, links = _system_view()
    binds += [(str(venv_dir), str(venv_dir)), (str(image_dir), str(image_dir)), (str(secrets_dir), SECRETS_MOUNT)]
    return SandboxSpec(
        bwrap=bwrap, binds=tuple(binds), chdir=str(image_dir), uid=uid,
        setpriv=(shutil.which("setpriv") or "") if uid is not None else "", symlinks=tuple(links),
    )


def build_install_spec(*, bwrap: str, venv_dir: Path, read_only: Sequence[str], uid: int | None) -> SandboxSpec:
    """The sandbox a venv's ``pip install`` runs in (``provider/venvs.py``): a function's view
    without image or secrets, the venv being built as the only writable folder, and
    ``read_only`` (the operator's wheelhouse, certificates) bound where they are. The network
    is the host's (pip needs the index)."""
    binds, links = _system_view()
    binds += [(path, path) for path in read_only if os.path.exists(path)]
    return SandboxSpec(
        bwrap=bwrap, binds=tuple(binds), chdir=str(venv_dir), uid=uid,
        setpriv=(shutil.which("setpriv") or "") if uid is not None else "", symlinks=tuple(links),
        writable=(str(venv_dir),),
    )


def build_rootfs_spec(*, bwrap: str, rootfs: Path, chdir: str, secrets_dir: Path, uid: int | None) -> SandboxSpec:
    """An OCI image's sandbox: ``rootfs`` (with ``ROOTFS_MOUNT_POINTS`` made) as ``/``."""
    binds: list[tuple[str, str]] = [(str(secrets_dir), SECRETS_MOUNT)]
    links: list[tuple[str, str]] = []
    if uid is not None:  # the outer sandbox runs setpriv and bwrap from the host's system view
        system, links = _system_view()
        binds = [*system, *binds, (str(rootfs), ROOTFS_STAGE)]
    return SandboxSpec(
        bwrap=bwrap, binds=tuple(binds), chdir=chdir or "/", uid=uid,
        setpriv=(shutil.which("setpriv") or "") if uid is not None else "", symlinks=tuple(links), root=str(rootfs),
    )


# ---- running it (watchdog side) --------------------------------------------------------------
def _mount_args(spec: SandboxSpec) -> list[str]:
    # /tmp first: the state directory (images, venvs) may itself live below /tmp.
    args: list[str] = ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    made: set[str] = {"/", "/tmp"}
    for target, link in spec.symlinks:
        args += ["--symlink", target, link]
    binds = [(source, dest, "--ro-bind") for source, dest in spec.binds]
    binds += [(path, path, "--bind") for path in spec.writable]
    for source, dest, how in binds:
        # bwrap would create missing parents with the host's modes (0700 for /root): make them
        # 0755 first so the function's uid can reach what is bound below them.
        parents = []
        parent = os.path.dirname(dest)
        while parent not in made:
            parents.append(parent)
            made.add(parent)
            parent = os.path.dirname(parent)
        for folder in reversed(parents):
            args += ["--perms", "0755", "--dir", folder]
        args += [how, source, dest]
        made.add(dest)
    return args


def _env_args(env: Mapping[str, str]) -> list[str]:
    args = ["--clearenv"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args


def _args_fd(args: Sequence[str]) -> int:
    """A memfd holding NUL-separated arguments for bwrap's ``--args`` (not in the process list)."""
    # A NUL would end one argument and start another of the caller's choosing ("--ro-bind
    # /state …", "--setenv LD_PRELOAD …"): every value here must be refused before, this is
    # the last line. Not named: the value may be a secret.
    if any("\0" in a for a in args):
        raise ValueError("a sandbox argument or environment value holds a NUL character")
    fd = os.memfd_create("bwrap-args", 0)
    os.write(fd, b"".join(a.encode() + b"\0" for a in args))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


_NAMESPACES = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent"]
_NO_PRIVILEGE = ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]


def sandbox_command(spec: SandboxSpec, argv: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], list[int]]:
    """The command that runs ``argv`` with ``env`` in the sandbox, and the fds it must inherit
    (the caller closes them once the child started)."""
    mounts = _mount_args(spec)
    if spec.uid is None:
        # An OCI rootfs goes first: everything else is mounted on top of it.
        root = ["--ro-bind", spec.root, "/"] if spec.root else []
        fd = _args_fd([*_NO_PRIVILEGE, *_NAMESPACES, "--new-session", *root, *mounts, "--chdir", spec.chdir, *_env_args(env)])
        return [spec.bwrap, "--args", str(fd), "--", *argv], [fd]
    # The inner bwrap sees the outer's mounts as they are (/tmp stays writable); binding them
    # again in its user namespace locks them: nothing it does can make them writable. A dev-bind,
    # since a plain bind would add nodev to the outer's /dev (null, zero, urandom …: a shell's
    # `>/dev/null` or `cmd &` would fail); every other mount there is nodev already, and stays so.
    # With an OCI image, the inner bwrap's / is the staged rootfs instead, and the outer's /proc,
    # /dev and secrets are carried onto it (bound, not made anew: it owns no PID namespace). Its
    # /tmp is a fresh one: the outer's holds the platform's own paths when they live below /tmp
    # (a checkout's venv), which an image's function has no business seeing.
    view = (["--ro-bind", ROOTFS_STAGE, "/", "--dev-bind", "/dev", "/dev", "--bind", "/proc", "/proc",
             "--perms", "1777", "--tmpfs", "/tmp", "--ro-bind", SECRETS_MOUNT, SECRETS_MOUNT] if spec.root
            else ["--dev-bind", "/", "/"])
    inner = _args_fd([*_NO_PRIVILEGE, *view, "--die-with-parent", "--new-session", "--chdir", spec.chdir, *_env_args(env)])
    # No --new-session here (the inner bwrap gives the function its own session): the outer
    # sandbox's init stays in the process group the watchdog signals, so stopping the group
    # ends the whole PID namespace even if --die-with-parent lost its race with a dying parent.
    outer = _args_fd([*_NAMESPACES, *mounts, "--clearenv"])
    drop = [spec.setpriv, "--reuid", str(spec.uid), "--regid", str(spec.uid), "--clear-groups",
            "--inh-caps", "-all", "--bounding-set", "-all", "--no-new-privs", "--"]
    return [spec.bwrap, "--args", str(outer), "--", *drop, spec.bwrap, "--args", str(inner), "--", *argv], [outer, inner]


# ---- is it usable here? ------------------------------------------------------------------------
@functools.cache
def bwrap_path() -> str | None:
    """bwrap's path if the whole sandbox works here (user namespaces may be refused)."""
    path = shutil.which("bwrap")
    if path is None:
        return None
    root = os.geteuid() == 0
    if root and shutil.which("setpriv") is None:
        return None
    here = os.path.realpath(sys.executable)
    spec = build_spec(bwrap=path, image_dir=Path("/usr"), venv_dir=Path("/usr"), secrets_dir=Path("/usr"),
                      uid=function_uid("probe") if root else None)
    spec = SandboxSpec(bwrap=spec.bwrap, binds=tuple(b for b in spec.binds if b[1] != SECRETS_MOUNT),
                       chdir="/", uid=spec.uid, setpriv=spec.setpriv, symlinks=spec.symlinks)
    argv, fds = sandbox_command(spec, [here, "-c", "pass"], {})
    try:
        probe = subprocess.run(argv, capture_output=True, timeout=20, pass_fds=fds, env={})
    except (OSError, subprocess.TimeoutExpired):
        return None
    finally:
        for fd in fds:
            os.close(fd)
    return path if probe.returncode == 0 else None


_warned = False


def warn_unsandboxed(asked: bool) -> None:
    """Say once why functions run without a sandbox (``asked``: --no-sandbox was given)."""
    global _warned
    if not _warned:
        _warned = True
        why = "--no-sandbox was given" if asked else "bubblewrap (bwrap) is not usable here"
        print(
            f"streamfaas: WARNING: {why}; functions run without a sandbox, as the gateway's user with "
            "its rights, and read their secrets from $STREAMFAAS_SECRETS_DIR instead of "
            "/var/openfaas/secrets: deploy only trusted code",
            file=sys.stderr,
            flush=True,
        )
