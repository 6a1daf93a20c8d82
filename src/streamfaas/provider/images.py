"""Local images: the local provider's equivalent of container images.

``build`` lays a template and a function's handler into a build context, names it by the
SHA-256 of its files (immutable, like an image digest) and points a tag (``stream:latest``) at it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..errors import ConfigError, ImageNotFound
from ..templates import get_template


def normalise_image(image: str) -> str:
    image = image.strip()
    if not image:
        raise ConfigError("image name is empty")
    last = image.rsplit("/", 1)[-1]
    if "@" not in last and ":" not in last:
        image += ":latest"
    return image


@dataclass(frozen=True)
class LocalImage:
    image: str
    digest: str
    path: Path
    lang: str
    fprocess: str
    created: float


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


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
        if "@sha256:" in image:
            name, digest = image.split("@", 1)
            tag_file = self._tag_file(name)
        else:
            digest = ""
            tag_file = self._tag_file(image)
        try:
            data = json.loads(tag_file.read_text())
        except (OSError, ValueError):
            raise ImageNotFound(image) from None
        digest = digest or str(data["digest"])
        path = self.blobs / digest.split(":", 1)[1]
        if not path.is_dir():
            raise ImageNotFound(image)
        return LocalImage(
            image=str(data["image"]),
            digest=digest,
            path=path,
            lang=str(data["lang"]),
            fprocess=str(data["fprocess"]),
            created=float(data["created"]),
        )
