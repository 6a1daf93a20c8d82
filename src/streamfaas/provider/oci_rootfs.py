"""OCI images on the local provider, as faasd runs them: pulled with skopeo, unpacked once with
umoci into ``<state>/oci/<digest>/rootfs`` and run (read-only, as ``/``) under the sandbox.

A reference with a registry host (``127.0.0.1:5000/functions/alpine:latest``, ``ghcr.io/o/f@sha256:…``)
or an archive (``docker-archive:/abs/path.tar``, ``oci-archive:/abs/path.tar``) is an OCI image.
The tag is resolved to the digest of its manifest first (``skopeo inspect --raw``), and a digest
already unpacked is used as it is: a second deploy of the same image pulls nothing.

Layers are hostile input (``../`` names, absolute links, links to walk through, whiteouts): umoci
unpacks them through securejoin, so nothing lands outside the rootfs, and ``--rootless`` even for
a root gateway, so no layer makes device nodes or sets owners. The mount points the sandbox needs
(``ROOTFS_MOUNT_POINTS``) are then made real directories, since bwrap follows links there while
it still sees the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import posixpath
import re
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .._process import kill_group
from ..errors import BadRequest, DeployError, UpstreamError
from ..sandbox import ROOTFS_MOUNT_POINTS
from .secrets import private_dir, write_private

INSPECT_TIMEOUT = 60.0
PULL_TIMEOUT = 600.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ARCHIVES = ("docker-archive:",)  # read in place by skopeo
# skopeo unpacks an oci-archive into /var/tmp first, as the gateway's user (root), and writes
# through the links the archive holds: "escape -> /etc/cron.d" then "escape/x".
_UNPACKED_ARCHIVES = ("oci-archive:",)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_BAD_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")
_LOGRUS_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')
_SKOPEO_PREFIX = re.compile(r'^Error (?:parsing image name|initializing source) "[^"]*":\s*')
_NOT_FOUND = ("manifest unknown", "name unknown", "no such file or directory", "not found")
# What skopeo needs of the gateway's environment: where credentials and proxies are, never more.
_PULL_ENV = ("PATH", "HOME", "XDG_RUNTIME_DIR", "REGISTRY_AUTH_FILE", "SSL_CERT_FILE", "SSL_CERT_DIR",
             "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy")


@dataclass(frozen=True)
class OciReference:
    text: str
    source: str  # skopeo's name of it: docker://REF or ARCHIVE:PATH
    repository: str  # docker://NAME without tag or digest ("" for an archive)
    pinned: str  # the digest given after @, or ""
    tls_verify: bool

    def at(self, digest: str) -> str:
        """skopeo's name for exactly ``digest`` (a tag could move between inspect and copy)."""
        return f"{self.repository}@{digest}" if self.repository else self.source


def parse_reference(image: str) -> OciReference | None:
    """The OCI reference ``image`` is, or None when it names no registry and no archive (a
    folder image's name)."""
    # Here, not at the top: _oci_build imports provider.images, so this package is mid-import then.
    from .._oci_build import is_loopback_registry, registry_host

    text = image.strip()
    if text.startswith(_UNPACKED_ARCHIVES):
        raise BadRequest(
            f"invalid image {image!r}: oci-archive: is not taken (skopeo would unpack it as this "
            "gateway's user, following its links); use docker-archive: or a registry"
        )
    for transport in ARCHIVES:
        if text.startswith(transport):
            path = text[len(transport):]
            if not os.path.isabs(path) or _BAD_CHARS.search(path):
                raise BadRequest(f"invalid image {image!r}: {transport} takes an absolute path")
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)
            except OSError:
                regular = True  # missing or unreadable: skopeo says which, as for any image
            if not regular:  # a FIFO or a device would hold skopeo (and the deploy) for its whole timeout
                raise BadRequest(f"invalid image {image!r}: {transport} takes a file")
            return OciReference(text, text, "", "", True)
    if registry_host(text) is None:
        return None
    if _BAD_CHARS.search(text) or text.startswith("-"):
        raise BadRequest(f"invalid image {image!r}")
    name, _, digest = text.partition("@")
    if digest and _DIGEST.fullmatch(digest) is None:
        raise BadRequest(f"invalid image {image!r}: a digest is sha256: and 64 lowercase hex digits")
    head, _, last = name.rpartition("/")
    repository = f"{head}/{last.split(':', 1)[0]}"
    return OciReference(text, f"docker://{text}", f"docker://{repository}", digest, not is_loopback_registry(text))


@dataclass(frozen=True)
class OciImage:
    """An unpacked OCI image: ``path`` holds ``rootfs/`` and ``image.json`` (its config)."""

    image: str
    digest: str
    path: Path
    env: tuple[tuple[str, str], ...]
    workdir: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def fprocess(self) -> str:
        env = dict(self.env)
        return env.get("function_process") or env.get("fprocess", "")

    def function_env(self, env_vars: Mapping[str, str], env_process: str | None) -> dict[str, str]:
        """The function's environment: the image's ``Env``, then the deployment's; nothing of
        the platform's. of-watchdog's default mode (a process per request, streamed) unless
        one of them names another."""
        env = {"PATH": DEFAULT_PATH, "HOME": "/tmp", "mode": "streaming", **dict(self.env), **env_vars}
        if env_process:  # the deployment's word wins over the image's, under either name
            env.pop("function_process", None)
            env["fprocess"] = env_process
        return env

    @classmethod
    def load(cls, path: Path) -> OciImage:
        data = json.loads((path / "image.json").read_text())
        return cls(
            image=str(data["image"]), digest=str(data["digest"]), path=path,
            env=tuple((str(k), str(v)) for k, v in data["env"]), workdir=str(data["workdir"]),
            entrypoint=tuple(map(str, data["entrypoint"])), cmd=tuple(map(str, data["cmd"])),
        )


class OciStore:
    """Unpacked images under ``<state>/oci``: ``<hex digest>/`` each, and ``tags/`` (the digest a
    reference had when it was last pulled, for a gateway that restarts without its registry)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tags = root / "tags"
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, ref: OciReference, *, prefer_cached: bool = False) -> OciImage:
        """The image ``ref`` names, pulled and unpacked unless its digest already is.
        ``prefer_cached``: take the digest the reference had last time without asking its registry
        (a restored function keeps running what it ran)."""
        digest = ref.pinned or (self._cached_digest(ref) if prefer_cached else "") or await self._resolve(ref)
        folder = self.root / digest.split(":", 1)[1]
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if not (folder / "image.json").is_file():
                await self._pull(ref, digest, folder)
        if not ref.pinned:
            write_private(self._tag_file(ref), json.dumps({"digest": digest}).encode(), 0o600)
        return OciImage.load(folder)

    def _tag_file(self, ref: OciReference) -> Path:
        return self.tags / (quote(ref.text, safe="") + ".json")

    def _cached_digest(self, ref: OciReference) -> str:
        try:
            digest = str(json.loads(self._tag_file(ref).read_text())["digest"])
        except (OSError, ValueError, KeyError, TypeError):
            return ""
        ok = _DIGEST.fullmatch(digest) and (self.root / digest.split(":", 1)[1] / "image.json").is_file()
        return digest if ok else ""

    async def _resolve(self, ref: OciReference) -> str:
        """The digest of the manifest the reference names now."""
        code, out, err = await _run(["skopeo", *_policy(), "inspect", "--raw", *_tls("--tls-verify", ref), ref.source],
                                    timeout=INSPECT_TIMEOUT, what=f"resolving {ref.text}")
        if code != 0:
            why = skopeo_error(err)
            if any(marker in why for marker in _NOT_FOUND):
                raise BadRequest(f"image {ref.text!r} not found: {why}")
            raise UpstreamError(f"cannot pull image {ref.text!r}: {why}")
        return "sha256:" + hashlib.sha256(out).hexdigest()

    async def _pull(self, ref: OciReference, digest: str, folder: Path) -> None:
        private_dir(self.root)
        work = Path(tempfile.mkdtemp(prefix=".pull-", dir=self.root))
        try:
            layout = work / "layout"
            code, _, err = await _run(
                ["skopeo", *_policy(), "copy", "--quiet", *_tls("--src-tls-verify", ref), ref.at(digest), f"oci:{layout}:image"],
                timeout=PULL_TIMEOUT, what=f"pulling {ref.text}", tmpdir=work,
            )
            if code != 0:
                raise UpstreamError(f"cannot pull image {ref.text!r}: {skopeo_error(err)}")
            config = _image_config(layout, ref.text)
            code, _, err = await _run(["umoci", "raw", "unpack", "--rootless", "--image", f"{layout}:image", str(work / "rootfs")],
                                      timeout=PULL_TIMEOUT, what=f"unpacking {ref.text}", tmpdir=work)
            if code != 0:
                raise BadRequest(f"cannot unpack image {ref.text!r}: {_last_line(err)}")
            workdir = rooted(str(config.get("WorkingDir") or "/"))
            prepare_rootfs(work / "rootfs", workdir)
            shutil.rmtree(layout)
            (work / "image.json").write_text(json.dumps({
                "image": ref.text, "digest": digest, "env": _env_pairs(config.get("Env")), "workdir": workdir,
                "entrypoint": _strings(config.get("Entrypoint")), "cmd": _strings(config.get("Cmd")),
            }))
            if folder.exists():  # a broken earlier attempt (no image.json): replaced
                shutil.rmtree(folder)
            os.replace(work, folder)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        print(f"streamfaas: pulled {ref.text} ({digest[:19]}) into {folder}", file=sys.stderr, flush=True)


def rooted(workdir: str) -> str:
    """``workdir`` resolved as a container runtime resolves it: against "/", where ".." stays
    at "/". So never a path outside the rootfs, whatever the image's config says."""
    return "/" + "/".join(Path(posixpath.normpath("/" + workdir)).parts[1:])


def prepare_rootfs(rootfs: Path, workdir: str) -> None:
    """Make what the sandbox mounts on real directories, and ``workdir`` where it is missing
    (as a container runtime does). Runs before the rootfs is published: nothing else writes it."""
    os.chmod(rootfs, 0o755)
    for rel in ROOTFS_MOUNT_POINTS:
        path = rootfs / rel
        with contextlib.suppress(FileNotFoundError):
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                os.chmod(path, 0o755)  # the function's uid walks through to its secrets
                continue
            os.unlink(path)  # a link (to anywhere on the host) or a file: never mounted on
        os.mkdir(path)
        os.chmod(path, 0o755)
    current = rootfs
    for part in Path(rooted(workdir)).parts[1:]:
        current = current / part
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return  # a link is followed inside the sandbox (bwrap's --chdir), a file fails there
        except FileNotFoundError:
            os.mkdir(current)
            os.chmod(current, 0o755)


def skopeo_error(stderr: str) -> str:
    """skopeo's reason, one line, without its "Error parsing image name …" preamble."""
    found = _LOGRUS_MSG.findall(stderr)
    if not found:
        return _last_line(stderr)
    try:
        message = str(json.loads(f'"{found[-1]}"'))
    except ValueError:
        message = found[-1]
    return " ".join(_SKOPEO_PREFIX.sub("", message).split())[:500]


def _last_line(text: str) -> str:
    lines = [ln.strip(" •⨯\t") for ln in text.splitlines() if ln.strip(" •⨯\t")]
    return lines[-1][:500] if lines else "no output"


def _tls(flag: str, ref: OciReference) -> list[str]:
    """Plain HTTP only for a loopback registry; an archive takes no TLS flag."""
    return [] if not ref.repository or ref.tls_verify else [f"{flag}=false"]


def _policy() -> list[str]:
    # The machine's signature policy when it has one; without one skopeo refuses every copy.
    return [] if Path("/etc/containers/policy.json").is_file() else ["--insecure-policy"]


async def _run(argv: Sequence[str], *, timeout: float, what: str, tmpdir: Path | None = None) -> tuple[int, bytes, str]:
    tool = shutil.which(argv[0])
    if tool is None:
        raise DeployError(f"{what}: {argv[0]} is not installed (apt-get install skopeo umoci): OCI images need it")
    env = {k: os.environ[k] for k in _PULL_ENV if k in os.environ}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)  # big blobs go with the pull, not into /var/tmp
    proc = await asyncio.create_subprocess_exec(
        tool, *argv[1:], stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
        # A layer's implicit parent folders get 0755 as under a container runtime, not the
        # gateway's 077 (which would keep a function's uid out of /bin); modes a layer names stay.
        # (uvloop takes no umask= argument).
        preexec_fn=_container_umask,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        raise UpstreamError(f"{what}: no answer within {timeout:g}s") from None
    finally:
        if proc.returncode is None:  # timed out, or the deploy was cancelled: no orphan
            kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
    return proc.returncode or 0, out, err.decode(errors="replace")


def _container_umask() -> None:
    os.umask(0o022)


def _blob(layout: Path, descriptor: object, image: str) -> dict[str, object]:
    digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
    if not isinstance(digest, str) or _DIGEST.fullmatch(digest) is None:
        raise DeployError(f"image {image!r}: its OCI layout names an invalid digest")
    data = json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes())
    if not isinstance(data, dict):
        raise DeployError(f"image {image!r}: {digest[:19]} is not a JSON object")
    return data


def _image_config(layout: Path, image: str) -> dict[str, object]:
    """The image config's ``config`` object (Env, WorkingDir, Entrypoint, Cmd …) of the one
    image skopeo copied into ``layout``."""
    try:
        index = json.loads((layout / "index.json").read_text())
        manifest = _blob(layout, index["manifests"][0], image)
        config = _blob(layout, manifest["config"], image).get("config") or {}
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise DeployError(f"image {image!r}: unreadable OCI layout ({type(exc).__name__}: {exc})") from None
    if not isinstance(config, dict):
        raise DeployError(f"image {image!r}: its config is not a JSON object")
    return config


def _strings(value: object) -> list[str]:
    strings = [str(v) for v in value] if isinstance(value, list) else []
    if any("\0" in v for v in strings):
        # Env, Cmd and Entrypoint become the sandbox's arguments, where a NUL starts a new one.
        raise DeployError("the image's config holds a NUL character in Env, Cmd or Entrypoint")
    return strings


def _env_pairs(value: object) -> list[tuple[str, str]]:
    pairs = []
    for item in _strings(value):
        key, sep, val = item.partition("=")
        if sep and key:
            pairs.append((key, val))
    return pairs
