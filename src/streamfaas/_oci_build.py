"""OCI images of functions, as faas-cli makes them: a build context under ``build/NAME/``
(shrinkwrap), then ``buildah bud`` on it, then ``buildah push`` to a registry.

The context holds the template, the handler under ``function/`` and ``wheels/`` (streamfaas
and its dependencies, see ``_wheelhouse``), so the image build asks no index for the platform's
own packages. buildah needs no daemon; ``--isolation chroot`` works where the OCI runtime
isolation does not (a VM without a systemd PID 1, hybrid cgroups).
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._files import replace_file
from ._wheelhouse import python_tag
from .errors import ConfigError, DeployError
from .provider.images import SKIPPED, check_handler_tree, check_image_name
from .stack import FunctionSpec
from .templates import get_template

_ARG_BASE = re.compile(r"^ARG BASE_IMAGE=(.*)$", re.MULTILINE)
# A reference's first component is a registry host when it has a dot or a port, or is localhost
# (the rule docker and containers/image use).
_HOST_HINT = re.compile(r"[.:]|^localhost$")
_OFFICIAL_PYTHON = re.compile(r"(?:docker\.io/(?:library/)?)?python:\d+(?:\.\d+)*(.*)")
_ERROR_PREFIX = re.compile(r"^error:\s*", re.IGNORECASE)
_OUTPUT_LINES = 200  # of buildah's output kept for the error; all of it goes to the log file


class ImageBuildError(DeployError):
    """buildah is missing, or a build or push failed; the message is one line."""


def base_for_wheels(template_default: str) -> str:
    """The base image for a template whose Dockerfile defaults to ``template_default``: the same
    official Python image (its variant kept: ``-slim-bookworm``) at the Python the wheels are
    made for, fully qualified (buildah refuses to guess a registry for a short name without a
    TTY to ask on). Another base is kept as it is."""
    match = _OFFICIAL_PYTHON.fullmatch(template_default.strip())
    if match is None:
        return template_default.strip()
    return f"docker.io/library/python:{python_tag()}{match.group(1)}"


def default_base_image() -> str:
    return base_for_wheels("python:3-slim")


def registry_host(image: str) -> str | None:
    first, sep, _rest = image.partition("/")
    return first if sep and _HOST_HINT.search(first) else None


def image_name(image: str, registry: str | None) -> str:
    """stack.yaml's ``image:``, under ``registry`` when it names no registry of its own."""
    image = check_image_name(image)
    if any(c.isspace() for c in image):
        raise ConfigError(f"invalid image name {image!r}")
    if registry and registry_host(image) is None:
        image = f"{registry.strip().rstrip('/')}/{image}"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        image += ":latest"
    return image


def is_loopback_registry(image: str) -> bool:
    host = registry_host(image) or ""
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    else:
        host = host.rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Buildah:
    """How to call buildah: its storage (its default, or a private vfs one under ``root``)."""

    root: Path | None = None
    executable: str = field(default="")

    def argv(self, *args: str) -> list[str]:
        exe = self.executable or shutil.which("buildah")
        if exe is None:
            raise ImageBuildError("buildah is not installed (apt-get install buildah): OCI builds and pushes need it")
        storage = [] if self.root is None else [
            "--storage-driver", "vfs", "--root", str(self.root / "root"), "--runroot", str(self.root / "runroot")]
        return [exe, *storage, *args]

    def run(self, args: Sequence[str], *, what: str, log: Path | None = None) -> str:
        """Run buildah; on failure, one line: what failed, the telling line of its output."""
        argv = self.argv(*args)
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
        except OSError as exc:
            raise ImageBuildError(f"{what}: cannot run buildah: {exc.strerror}") from None
        output = done.stdout + done.stderr
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            replace_file(log, output)  # a link a cloned project put there is replaced, not written through
        if done.returncode != 0:
            where = f"; all of buildah's output: {log}" if log is not None else ""
            raise ImageBuildError(f"{what}: {telling_line(output)} (buildah exit {done.returncode}{where})")
        return done.stdout


def telling_line(output: str) -> str:
    """The line of buildah's output that says why it failed: pip's last ``ERROR:`` line (a
    requirement that cannot be installed), else buildah's own last error, else the last line."""
    lines = [ln.strip() for ln in output.splitlines()[-_OUTPUT_LINES:] if ln.strip()]
    for prefix in ("ERROR:", "error", "Error"):
        for line in reversed(lines):
            if line.startswith(prefix):
                return _ERROR_PREFIX.sub("", line)[:400]
    return lines[-1][:400] if lines else "no output"


def shrinkwrap(fn: FunctionSpec, build_root: Path, wheels: Sequence[Path], base_image: str | None) -> tuple[Path, str]:
    """Write ``build_root/NAME/``: template, handler in ``function/``, ``wheels/``, and the
    Dockerfile's ``BASE_IMAGE`` default set to ``base_image``, or to the template's own default
    at the Python the wheels fit. Anything there from an earlier build is replaced, as faas-cli
    does. Returns the folder and the base image."""
    if fn.lang is None or fn.handler_path is None:
        raise ConfigError(f"function {fn.name!r} needs lang and handler to be built")
    template = get_template(fn.lang)
    handler = fn.handler_path
    if not handler.is_dir():
        raise ConfigError(f"function {fn.name!r}: handler folder {str(handler)!r} does not exist")
    outputs = build_root.resolve()
    if handler.resolve().is_relative_to(outputs):
        # Each build empties build/NAME and copies the handler into it: its own output, or itself.
        raise ConfigError(f"function {fn.name!r}: the handler {str(handler)!r} is in the build output folder {str(build_root)!r}; move it out")
    check_handler_tree(handler, outputs=outputs)
    dest = build_root / fn.name
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    template.copy_into(dest, with_starter_function=False)
    if not (dest / "Dockerfile").is_file():
        raise ConfigError(f"template {fn.lang!r} has no Dockerfile, so it cannot make an OCI image")
    skip = shutil.ignore_patterns(*SKIPPED)

    def ignore(folder: str, names: list[str]) -> set[str]:
        # A handler of "." holds build/ itself: never copy the contexts into a context.
        ignored = set(skip(folder, names))
        if Path(folder).resolve() == outputs.parent:
            ignored.add(outputs.name)
        return ignored

    shutil.copytree(handler, dest / "function", dirs_exist_ok=True, ignore=ignore)
    (dest / "function" / "__init__.py").touch()
    (dest / "function" / "requirements.txt").touch()
    (dest / "wheels").mkdir()
    for wheel in wheels:
        shutil.copy2(wheel, dest / "wheels" / wheel.name)
    dockerfile = dest / "Dockerfile"
    text = dockerfile.read_text()
    found = _ARG_BASE.search(text)
    if found is None:
        raise ConfigError(f"template {fn.lang!r}: its Dockerfile has no `ARG BASE_IMAGE=` line")
    base = base_image or base_for_wheels(found.group(1))
    dockerfile.write_text(_ARG_BASE.sub(lambda _m: f"ARG BASE_IMAGE={base}", text, count=1))
    return dest, base


def build_image(buildah: Buildah, context: Path, image: str, build_args: Mapping[str, str], log: Path) -> None:
    """``buildah bud`` of a shrinkwrapped context, tagged ``image``."""
    args = ["bud", "--isolation", "chroot", "--layers", "--force-rm", "--quiet", "-f", str(context / "Dockerfile"), "-t", image]
    for key, value in build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    buildah.run([*args, str(context)], what=f"building {image} failed", log=log)


def has_image(buildah: Buildah, image: str) -> bool:
    done = subprocess.run(buildah.argv("inspect", "--type", "image", image), stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return done.returncode == 0


def push_image(buildah: Buildah, source: str, dest: str, *, tls_verify: bool | None) -> str:
    """``buildah push`` of the local image ``source`` to ``dest`` (in the registry its name
    holds); returns the pushed digest. Credentials come from buildah's own auth file
    (``buildah login``), never from us."""
    if registry_host(dest) is None:
        raise ConfigError(f"image {dest!r} names no registry: give --registry HOST[:PORT] or a full image name")
    verify = (not is_loopback_registry(dest)) if tls_verify is None else tls_verify
    with tempfile.TemporaryDirectory(prefix="streamfaas-push-") as tmp:
        digest_file = Path(tmp) / "digest"
        buildah.run(["push", "--quiet", f"--tls-verify={'true' if verify else 'false'}", "--digestfile", str(digest_file),
                     source, f"docker://{dest}"], what=f"pushing {dest} failed")
        return digest_file.read_text().strip() if digest_file.exists() else ""
