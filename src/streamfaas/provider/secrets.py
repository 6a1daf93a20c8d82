"""Secrets: files readable only by their owner, given only to the functions that name them.

The store keeps one file per secret under ``<state>/secrets`` (folder 0700, files 0600). A
function gets copies of just its secrets in its own folder, which the sandbox mounts at
``/var/openfaas/secrets``. Values never go into environments, logs, listings or errors.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import BadRequest, Conflict, SecretNotFound

SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9]([-._A-Za-z0-9]{0,251}[A-Za-z0-9])?$")
MAX_SECRET_BYTES = 1024 * 1024


# A secret is a value, never code: names that Python or the dynamic loader would pick up from
# a folder on their path (sitecustomize.py, x.pth, lib.so) are not secret names.
_CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".pth", ".pyz", ".so", ".dll", ".dylib", ".egg", ".whl", ".zip")


def valid_secret_name(name: str) -> bool:
    return SECRET_NAME_RE.fullmatch(name) is not None and not name.lower().endswith(_CODE_SUFFIXES) and ".so." not in name.lower()


def check_secret_name(name: str) -> str:
    if not valid_secret_name(name):
        raise BadRequest(
            f"invalid secret name {name!r}: use letters, digits, '-', '.' and '_', starting and ending with a letter "
            "or digit, and no code file extension (.py, .pth, .so …)"
        )
    return name


def write_private(path: Path, value: bytes, mode: int, owner: int | None = None) -> None:
    """Write a file that only its owner can read, atomically (its folders made 0700).
    ``owner``: a uid to give the file to (a root platform's function uid)."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, value)
        if owner is not None:
            os.fchown(fd, owner, owner)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class SecretStore:
    def __init__(self, root: Path, functions_root: Path, owner: Callable[[str], int | None] = lambda _: None) -> None:
        self.root = root
        self.functions_root = functions_root  # <state>/run: one folder per function
        self.owner = owner  # the uid a function's copies belong to (None: ours)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_file() and not p.name.startswith("."))

    def exists(self, name: str) -> bool:
        return (self.root / check_secret_name(name)).is_file()

    def _check_value(self, value: bytes) -> None:
        if len(value) > MAX_SECRET_BYTES:
            raise BadRequest(f"secret value is too large: at most {MAX_SECRET_BYTES} bytes")

    def create(self, name: str, value: bytes) -> None:
        check_secret_name(name)
        self._check_value(value)
        if self.exists(name):
            raise Conflict(f"secret {name!r} already exists; update it instead")
        write_private(private_dir(self.root) / name, value, 0o600)

    def update(self, name: str, value: bytes) -> list[str]:
        """Replace a value; returns the functions whose copies were refreshed."""
        check_secret_name(name)
        self._check_value(value)
        if not self.exists(name):
            raise SecretNotFound(f"secret {name!r} not found")
        write_private(self.root / name, value, 0o600)
        refreshed = []
        if self.functions_root.is_dir():
            for folder in self.functions_root.iterdir():
                copy = folder / "secrets" / name
                if copy.is_file():
                    write_private(copy, value, 0o400, self.owner(folder.name))
                    refreshed.append(folder.name)
        return refreshed

    def delete(self, name: str, used_by: Iterable[str]) -> None:
        check_secret_name(name)
        if not self.exists(name):
            raise SecretNotFound(f"secret {name!r} not found")
        users = sorted(used_by)
        if users:
            raise Conflict(f"secret {name!r} is used by {', '.join(users)}; remove it from those functions first")
        (self.root / name).unlink()

    def missing(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if not valid_secret_name(n) or not (self.root / n).is_file()]

    def materialise(self, function: str, names: Iterable[str]) -> Path:
        """Lay copies of exactly these secrets into the function's own folder; returns it."""
        folder = private_dir(private_dir(private_dir(self.functions_root) / function) / "secrets")
        owner = self.owner(function)
        if owner is not None:
            # The function's own uid reads its folder (bound at /var/openfaas/secrets) and
            # nothing else of <state>/run, which stays 0700 root.
            os.chown(folder, owner, owner)
            os.chmod(folder, 0o500)
        wanted = set(names)
        # Replicas of the previous version may still serve from this folder during a rolling
        # update, so it is updated in place, never swapped for a new one.
        for old in folder.iterdir():
            if old.name not in wanted:
                old.unlink()
        for name in sorted(wanted):
            source = self.root / check_secret_name(name)
            try:
                value = source.read_bytes()
            except FileNotFoundError:
                raise SecretNotFound(f"secret {name!r} not found; create it with `streamfaas secret create {name}`") from None
            write_private(folder / name, value, 0o400, owner)
        return folder

    def forget(self, function: str) -> None:
        shutil.rmtree(self.functions_root / function, ignore_errors=True)
