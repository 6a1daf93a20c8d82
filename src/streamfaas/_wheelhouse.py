"""The wheels an OCI function image installs: streamfaas itself and its runtime dependencies.

An image build must not need a package index (tests and CI run with ``PIP_NO_INDEX=1``; an
air-gapped builder has none). So the wheels come from this machine:

- streamfaas: from a checkout (an editable install), ``pip wheel --no-deps`` of the checkout,
  without build isolation when this environment already has what ``[build-system]`` asks for
  (the dev extra brings it), so no index is asked; from a regular install, repacked like the
  dependencies.
- every runtime dependency: repacked from the distribution installed here (its files as
  RECORD lists them, and its dist-info), so the image runs exactly the versions this
  environment runs and was tested with. Wheels hold the tags the installed one had, so the
  image's Python must be this Python's minor version (its binary wheels are cpXY).

Built once and cached under ``<state>/wheelhouse`` (a dependency by its name and version,
streamfaas by a hash of its source).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path, PurePosixPath

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ._build import content_hash
from .errors import DeployError

PACKAGE = "streamfaas"
# Written by the installer, not part of a wheel (RECORD is written anew).
_INSTALLER_FILES = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


class WheelError(DeployError):
    """The wheels for an image could not be made."""


def python_tag() -> str:
    """The Python the wheels fit: ``3.11`` for this interpreter."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _dist_info_dir(dist: metadata.Distribution) -> str:
    for file in dist.files or ():
        if file.name == "METADATA" and file.parent.name.endswith(".dist-info"):
            return file.parent.as_posix()
    raise WheelError(f"{dist.metadata['Name']}: its install lists no dist-info METADATA; reinstall it")


def _compressed_tags(tags: list[str]) -> str:
    """``cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64``, the file-name form of a tag set."""
    parts = [t.split("-") for t in tags if t.count("-") == 2]
    if not parts:
        return "py3-none-any"
    return "-".join(".".join(sorted({p[i] for p in parts})) for i in range(3))


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack(dist: metadata.Distribution, dest: Path) -> Path:
    """A wheel of an installed distribution, in ``dest`` (kept when it is there already)."""
    info_dir = _dist_info_dir(dist)
    wheel_meta = Parser().parsestr(dist.read_text("WHEEL") or "")
    name = canonicalize_name(dist.metadata["Name"]).replace("-", "_")
    target = dest / f"{name}-{dist.version}-{_compressed_tags(wheel_meta.get_all('Tag') or [])}.whl"
    if target.exists():
        return target
    record: list[str] = []
    fd, tmp = tempfile.mkstemp(prefix=".repack-", suffix=".whl", dir=dest)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for file in dist.files or ():
                posix = PurePosixPath(file.as_posix())
                # Scripts (../../bin) are made anew from entry_points.txt by the installer.
                if posix.parts[0] == ".." or "__pycache__" in posix.parts:
                    continue
                if posix.parent.as_posix() == info_dir and posix.name in _INSTALLER_FILES:
                    continue
                data = Path(str(file.locate())).read_bytes()
                zf.writestr(posix.as_posix(), data)
                record.append(f"{posix.as_posix()},{_record_hash(data)},{len(data)}")
            record.append(f"{info_dir}/RECORD,,")
            zf.writestr(f"{info_dir}/RECORD", "\n".join(record) + "\n")
        os.replace(tmp, target)
    except OSError as exc:
        raise WheelError(f"cannot repack {dist.metadata['Name']} {dist.version} into a wheel: {exc}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def _checkout_root(dist: metadata.Distribution) -> Path | None:
    """The source checkout behind an editable install of streamfaas, else None."""
    raw = dist.read_text("direct_url.json")
    if not raw:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    url = str(info.get("url", ""))
    if not info.get("dir_info", {}).get("editable") or not url.startswith("file://"):
        return None
    root = Path(url.removeprefix("file://"))
    return root if (root / "pyproject.toml").is_file() else None


def _have_build_requirements(root: Path) -> bool:
    """Whether this environment has everything ``[build-system] requires`` names."""
    try:
        requires = tomllib.loads((root / "pyproject.toml").read_text())["build-system"]["requires"]
        for text in requires:
            req = Requirement(text)
            if not req.specifier.contains(metadata.version(req.name), prereleases=True):
                return False
    except (OSError, KeyError, ValueError, InvalidRequirement, metadata.PackageNotFoundError):
        return False
    return True


def _build_checkout(root: Path, cache: Path) -> Path:
    """``pip wheel`` of the checkout, cached by a hash of what goes into it."""
    digest = hashlib.sha256(content_hash().encode())  # the package's files, where the checkout has them
    digest.update((root / "pyproject.toml").read_bytes())
    folder = cache / PACKAGE / digest.hexdigest()[:24]
    found = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if found:
        return found[0]
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(work)]
        if _have_build_requirements(root):
            argv.append("--no-build-isolation")  # no index asked for setuptools
        done = subprocess.run([*argv, str(root)], capture_output=True, text=True, cwd=work)
        if done.returncode != 0:
            lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
            why = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "")
            raise WheelError(
                f"cannot build a wheel of streamfaas from {root}: {why} "
                "(offline, this needs `pip install -e '.[dev]'`, which brings setuptools>=77)"
            )
        built = sorted(work.glob("*.whl"))
        if not built:
            raise WheelError(f"pip wheel made no wheel of streamfaas from {root}")
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(work, folder)
            work = folder
        except OSError:  # another build cached the same source meanwhile
            if not (folder / built[0].name).is_file():
                raise WheelError(f"cannot cache the streamfaas wheel in {folder}") from None
        return folder / built[0].name
    finally:
        if work != folder:
            shutil.rmtree(work, ignore_errors=True)


def _requirements(wheel: Path) -> list[str]:
    """Requires-Dist of a wheel, from its METADATA (so a checkout's new dependency counts)."""
    with zipfile.ZipFile(wheel) as zf:
        name = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1), None)
        if name is None:
            raise WheelError(f"{wheel.name}: no METADATA inside")
        return Parser().parsestr(zf.read(name).decode()).get_all("Requires-Dist") or []


def _closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The installed distributions these requirements need, transitively (no extras of ours)."""
    found: dict[str, metadata.Distribution] = {}
    seen: set[tuple[str, str]] = set()
    pending = [(text, "") for text in requirements]
    while pending:
        text, extra = pending.pop()
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = canonicalize_name(req.name)
        try:
            dist = found.get(key) or metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise WheelError(f"{req.name} (needed by an OCI image) is not installed here; run `pip install -e .` again") from None
        found[key] = dist
        for wanted in ("", *sorted(req.extras)):
            if (key, wanted) not in seen:
                seen.add((key, wanted))
                pending.extend((dep, wanted) for dep in dist.requires or ())
    return [found[k] for k in sorted(found)]


def _with_extras(requirements: list[str], extras: tuple[str, ...]) -> list[str]:
    """The base requirements, plus those of ``extras`` (their ``extra == …`` marker dropped)."""
    if not extras:
        return requirements
    out = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and any(req.marker.evaluate({"extra": e}) for e in extras):
            req.marker = None
            text = str(req)
        out.append(text)
    return out


def collect_wheels(cache: Path, extras: tuple[str, ...] = ()) -> list[Path]:
    """The streamfaas wheel first, then one wheel per runtime dependency (with those of
    streamfaas's ``extras``, e.g. ``("kubernetes", "nats")``); all under ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise WheelError("streamfaas is not installed as a package here (pip install -e .)") from None
    root = _checkout_root(dist)
    own = _build_checkout(root, cache) if root is not None else repack(dist, cache)
    wanted = _with_extras(_requirements(own), extras)
    deps = [d for d in _closure(wanted) if canonicalize_name(d.metadata["Name"]) != PACKAGE]
    return [own, *(repack(d, cache) for d in deps)]
