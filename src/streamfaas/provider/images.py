"""Local images: the local provider's equivalent of container images.

``build`` lays a template and a function's handler into a build context, names it by the
SHA-256 of its files (immutable, like an image digest) and points a tag (``stream:latest``) at it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..errors import BadRequest, ConfigError, ImageNotFound
from ..templates import get_template

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Docker's (and containerd's) bounds: a repository name (registry host included) and a tag.
MAX_REPOSITORY = 255
MAX_TAG = 128
# What the copies of a handler leave out (a developer's venv, git, bytecode).
SKIPPED = ("__pycache__", "*.pyc", ".venv", ".git")
_MAX_ENTRIES = 100_000  # files and folders in a handler, counting what its links lead to
_HASH_NAME_ABOVE = 250  # bytes of a quoted tag name: past it, with ".json", no file system takes it


def check_image_name(image: str) -> str:
    """``image`` stripped, or a ConfigError: empty, control characters, longer than a
    registry takes (its tag file's name would be too long for the file system too)."""
    image = image.strip()
    if not image:
        raise ConfigError("image name is empty")
    if _CONTROL.search(image):
        raise ConfigError(f"invalid image name {image!r}: it holds control characters")
    name = image.partition("@")[0]
    head, slash, last = name.rpartition("/")
    repository, _, tag = last.partition(":")
    if len(head + slash + repository) > MAX_REPOSITORY or len(tag) > MAX_TAG or len(image) > 2 * MAX_REPOSITORY:
        raise ConfigError(
            f"image name {image[:40]!r}… is {len(image)} characters long: "
            f"a repository name takes at most {MAX_REPOSITORY}, a tag {MAX_TAG}"
        )
    return image


def normalise_image(image: str) -> str:
    image = check_image_name(image)
    last = image.rsplit("/", 1)[-1]
    if "@" not in last and ":" not in last:
        image += ":latest"
    return image


def readable_by_all(root: Path) -> None:
    """Let any uid read (not write) a tree: a root platform's function uids run from it.
    Nothing secret lies in an image or a venv; the state directory above stays 0700."""
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                continue
            wanted = mode | (0o555 if stat.S_ISDIR(mode) or mode & 0o100 else 0o444)
            if wanted != mode:
                os.chmod(path, stat.S_IMODE(wanted))
    os.chmod(root, stat.S_IMODE(os.stat(root).st_mode) | 0o555)


@dataclass(frozen=True)
class LocalImage:
    image: str
    digest: str
    path: Path
    lang: str
    fprocess: str
    created: float

    def make_readable(self) -> None:
        if stat.S_IMODE(os.stat(self.path).st_mode) & 0o005 != 0o005:
            readable_by_all(self.path)

    def requirements(self) -> str:
        """The function's requirements.txt; text that is not UTF-8 is the deployer's error."""
        path = self.path / "function" / "requirements.txt"
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"image {self.image!r}: requirements.txt is not UTF-8 text (bad byte at offset {exc.start})") from None


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0")
        with path.open("rb") as f:  # in pieces: a handler's file may be larger than memory
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


@dataclass
class _Step:
    """A real folder on a walk down a handler, and the entry that led to it (a link, or itself)."""

    folder: Path
    entry: Path
    count: int
    subfolders: list[tuple[Path, Path]]
    pending: Iterator[tuple[Path, Path]]


def check_handler_tree(handler: Path, *, outputs: Path | None = None) -> None:
    """Refuse a handler folder that the build's copy (which follows links) would copy wrongly,
    naming the file: a symlink out of it (one to ``~/.openfaas/config.yml`` would put the
    builder's credentials into the image), a loop of links (the copy would never end), a link
    to nothing, a FIFO, socket or device (the copy would wait on it or fail), more than
    ``_MAX_ENTRIES`` entries counting what links lead to (links doubling at each level fill
    the disk without a loop), and anything leading into ``outputs`` (where the copy goes).

    Each real folder is read once: a depth-first walk over them, links as edges."""
    root = handler.resolve()
    skip = shutil.ignore_patterns(*SKIPPED)

    def shown(entry: Path) -> Path:
        return handler / entry.relative_to(root)  # as the user named the folder

    def read(folder: Path) -> tuple[int, list[tuple[Path, Path]]]:
        """A real folder's entries, checked: how many, and its subfolders as (entry, real folder)."""
        names = sorted(os.listdir(folder))
        ignored = skip(str(folder), names)
        if outputs is not None and folder == outputs.parent:
            ignored.add(outputs.name)
        count, subfolders = 0, []
        for name in names:
            if name in ignored:
                continue
            count += 1
            entry = target = folder / name
            mode = os.lstat(entry).st_mode
            if stat.S_ISLNK(mode):
                target = Path(os.path.realpath(entry))  # never raises, for a loop either
                if target != root and root not in target.parents:
                    raise ConfigError(f"{shown(entry)}: a symlink out of the handler folder (to {target}); copy the file in instead")
                if outputs is not None and target.is_relative_to(outputs):
                    raise ConfigError(f"{shown(entry)}: a symlink into the build output folder {outputs}")
                try:
                    mode = os.stat(target).st_mode
                except OSError:  # missing, or a loop of links
                    raise ConfigError(f"{shown(entry)}: a symlink that leads to no file (to {target})") from None
            if stat.S_ISDIR(mode):
                subfolders.append((entry, target))
            elif not stat.S_ISREG(mode):
                raise ConfigError(f"{shown(entry)}: not a regular file or folder (a FIFO, socket or device); remove it")
        return count, subfolders

    def step(folder: Path, entry: Path) -> _Step:
        count, subfolders = read(folder)
        return _Step(folder, entry, count, subfolders, iter(subfolders))

    sizes: dict[Path, int] = {}  # real folders done: their entries, counting what links lead to
    path = [step(root, root)]
    while path:
        top = path[-1]
        for entry, target in top.pending:
            if any(s.folder == target for s in path):
                # A loop: through this entry, or else through a link on the way down from target.
                link, to = (entry, target) if entry != target else next(
                    (s.entry, s.folder) for s in reversed(path) if s.entry != s.folder)
                raise ConfigError(f"{shown(link)}: a symlink to {to}, which leads back to a folder it lies in: "
                                  "copying it would never end")
            if target not in sizes:
                path.append(step(target, entry))
                break
        else:
            path.pop()
            total = top.count + sum(sizes[target] for _, target in top.subfolders)
            sizes[top.folder] = min(total, _MAX_ENTRIES + 1)  # doubling at each level: no huge numbers
    if sizes[root] > _MAX_ENTRIES:
        raise ConfigError(f"{handler}: more than {_MAX_ENTRIES} files and folders, counting what its links lead to")


class ImageStore:
    """Images under ``<state>/images``: ``blobs/<digest>/`` (files) and ``tags/<image>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tags = root / "tags"

    def _tag_file(self, image: str) -> Path:
        image = normalise_image(image)
        name = quote(image, safe="")
        if len(name) > _HASH_NAME_ABOVE:
            # Too long a file name: hex has no "%", which every quoted name has (":" or "@").
            name = hashlib.sha256(image.encode()).hexdigest()
        return self.tags / (name + ".json")

    def build(self, image: str, lang: str, handler: Path) -> LocalImage:
        check_image_name(image)
        if not handler.is_dir():
            raise ConfigError(f"handler folder {str(handler)!r} does not exist")
        check_handler_tree(handler)
        template = get_template(lang)
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tags.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=self.blobs))
        try:
            template.copy_into(work, with_starter_function=False)
            shutil.copytree(
                handler,
                work / "function",
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns(*SKIPPED),
            )
            (work / "function" / "__init__.py").touch()
            if not (work / "function" / "requirements.txt").exists():
                (work / "function" / "requirements.txt").touch()
            readable_by_all(work)  # mkdtemp made it 0700; function uids must read it
            digest = "sha256:" + _tree_digest(work)
            final = self.blobs / digest.split(":", 1)[1]
            if final.exists():
                shutil.rmtree(work)
            else:
                os.replace(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        record = LocalImage(
            image=normalise_image(image),
            digest=digest,
            path=final,
            lang=lang,
            fprocess=template.fprocess,
            created=time.time(),
        )
        tag = self._tag_file(image)
        tmp = tag.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "image": record.image,
                    "digest": digest,
                    "lang": lang,
                    "fprocess": record.fprocess,
                    "created": record.created,
                }
            )
        )
        os.replace(tmp, tag)
        return record

    def resolve(self, image: str) -> LocalImage:
        """The image a tag names now (``name@sha256:…`` pins a digest)."""
        if "@" in image:
            name, digest = image.split("@", 1)
            if not name or _DIGEST.fullmatch(digest) is None:
                raise BadRequest(f"invalid image {image!r}: a digest is sha256: and 64 lowercase hex digits")
            tag_file = self._tag_file(name)
        else:
            digest = ""
            tag_file = self._tag_file(image)
        try:
            data = json.loads(tag_file.read_text())
        except (OSError, ValueError):
            raise ImageNotFound(image) from None
        digest = digest or str(data["digest"])
        if _DIGEST.fullmatch(digest) is None:
            raise ImageNotFound(image)
        path = self.blobs / digest.split(":", 1)[1]
        # Content-addressed folders sit right under blobs/; nothing may lead elsewhere.
        if path.parent.resolve() != self.blobs.resolve() or path.is_symlink() or not path.is_dir():
            raise ImageNotFound(image)
        return LocalImage(
            image=str(data["image"]),
            digest=digest,
            path=path,
            lang=str(data["lang"]),
            fprocess=str(data["fprocess"]),
            created=float(data["created"]),
        )
