"""Per-function virtual environments, cached by the hash of what goes into them.

A function's venv sees the platform's own packages (Flask and waitress come with streamfaas)
through a ``.pth`` line, so a function without extra requirements needs no pip run at all, and
one with them installs only what the platform lacks. A redeploy with unchanged requirements
reuses the venv as it is.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from ..errors import DeployError
from .images import readable_by_all


def _platform_site_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def _meaningful(requirements: str) -> str:
    lines = (line.split("#", 1)[0].strip() for line in requirements.splitlines())
    return "\n".join(sorted(line for line in lines if line))


class VenvCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}

    def key(self, requirements: str) -> str:
        h = hashlib.sha256()
        h.update(sys.version.encode() + b"\0" + sys.prefix.encode() + b"\0")
        h.update(_meaningful(requirements).encode())
        return h.hexdigest()[:24]

    async def ensure(self, requirements: str, log: Path | None = None) -> Path:
        """The venv for these requirements, built on first use; returns its folder."""
        key = self.key(requirements)
        final = self.root / key
        if (final / ".complete").exists():
            return final
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if (final / ".complete").exists():
                return final
            self.root.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
            try:
                await self._build(work, requirements, log)
                readable_by_all(work)  # a root platform's function uids run from it
                (work / ".complete").touch()
                if final.exists():
                    shutil.rmtree(final)
                os.replace(work, final)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
        return final

    async def _build(self, venv: Path, requirements: str, log: Path | None) -> None:
        await _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], log)
        python = venv / "bin" / "python"
        purelib = await _capture([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        site_line = "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in _platform_site_dirs())
        Path(purelib.strip(), "_streamfaas_platform.pth").write_text(site_line + "\n")
        if _meaningful(requirements):
            req = venv / "requirements.txt"
            req.write_text(requirements)
            await _run(
                [
                    sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--disable-pip-version-check", "--no-input", "-q", "-r", str(req),
                ],
                log,
            )


async def _run(argv: list[str], log: Path | None) -> None:
    out = open(log, "ab") if log else None  # noqa: SIM115 - closed below
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out or asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
    finally:
        if out:
            out.close()
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise DeployError(f"{Path(argv[2]).name if len(argv) > 2 else argv[0]} failed: {' | '.join(tail)}")


async def _capture(argv: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise DeployError(f"venv check failed: {err.decode(errors='replace').strip()}")
    return out.decode()
