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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..errors import BadRequest, ConfigError, ImageNotFound
from ..templates import get_template

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def normalise_image(image: str) -> str:
    image = image.strip()
    if not image:
        raise ConfigError("image name is empty")
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


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _check_links(handler: Path) -> None:
    """A handler's symlinks must stay inside it: the build copies what a link points to, and a
    link to ``~/.openfaas/config.yml`` would put the builder's credentials into the image."""
    root = handler.resolve()
    for folder, dirs, files in os.walk(handler):
        for name in (*dirs, *files):
            path = Path(folder, name)
            if path.is_symlink():
                target = path.resolve()
                if target != root and root not in target.parents:
                    raise ConfigError(f"{path}: a symlink out of the handler folder (to {target}); copy the file in instead")


class ImageStore:
    """Images under ``<state>/images``: ``blobs/<digest>/`` (files) and ``tags/<image>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tags = root / "tags"

    def _tag_file(self, image: str) -> Path:
        return self.tags / (quote(normalise_image(image), safe="") + ".json")

    def build(self, image: str, lang: str, handler: Path) -> LocalImage:
        if not handler.is_dir():
            raise ConfigError(f"handler folder {str(handler)!r} does not exist")
        _check_links(handler)
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
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".venv", ".git"),
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
