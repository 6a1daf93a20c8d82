"""Which build of streamfaas is running: the ``sha`` that ``/system/info`` reports.

A packaging step may record the git commit it built from in ``streamfaas/_build_commit.py``
(``COMMIT = "<sha>"``). Without one (a source checkout, an editable install) the sha is a
content hash of the installed package, so two installs report the same sha exactly when
they hold the same files.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_SKIPPED_DIRS = {"__pycache__"}


def _recorded_commit() -> str:
    try:
        module = importlib.import_module(f"{__package__}._build_commit")
    except ImportError:
        return ""
    commit = getattr(module, "COMMIT", "")
    return commit.strip() if isinstance(commit, str) else ""


def content_hash(root: Path = _PACKAGE) -> str:
    """SHA-256 over the package's files (relative path and bytes), in a fixed order."""
    digest = hashlib.sha256()
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.suffix != ".pyc" and not _SKIPPED_DIRS.intersection(p.relative_to(root).parts)
    )
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


@functools.cache
def build_sha() -> str:
    """Computed once a process: it reads every file of the package when no commit was recorded."""
    # Else 40 hex digits, the length of the git sha that OpenFaaS clients print in this place.
    return _recorded_commit() or content_hash()[:40]
