"""OCI images, as faas-cli makes them: ``build --shrinkwrap``/``build --oci`` (their options are
defined here), ``push`` and ``publish``.

``streamfaas build`` without these options keeps making local images for the local provider.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from .._oci_build import (
    Buildah,
    ImageBuildError,
    build_image,
    default_base_image,
    has_image,
    image_name,
    push_image,
    shrinkwrap,
)
from .._wheelhouse import collect_wheels, python_tag
from ..stack import FunctionSpec, Stack
from ._options import Context, pass_ctx, stack_option
from ._text import cell
from ._types import KEY_VALUE, _ParamType

F = TypeVar("F", bound=Callable[..., Any])


class RegistryHost(_ParamType):
    """``HOST[:PORT]`` (optionally with a path under it), not a URL."""

    name = "host[:port]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().rstrip("/")
        if not text or "://" in text or any(c.isspace() for c in text) or text.startswith("/"):
            self.fail(f"expected HOST[:PORT] (like 127.0.0.1:5000 or ghcr.io/me), got {value!r}", param, ctx)
        return text


class ImageReference(_ParamType):
    """An image name (``localhost/base:tag``, ``docker.io/library/python:3.11-slim``)."""

    name = "image"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not text or "://" in text or any(c.isspace() for c in text) or text.startswith(("/", "-")):
            self.fail(f"expected an image name like localhost/base:tag, got {value!r}", param, ctx)
        return text


REGISTRY = RegistryHost()
IMAGE = ImageReference()


@dataclass(frozen=True)
class OCIOptions:
    registry: str | None
    base_image: str | None
    build_args: tuple[tuple[str, str], ...]
    buildah_root: Path | None
    pip_no_index: bool | None

    def buildah(self) -> Buildah:
        return Buildah(root=self.buildah_root)

    def args_for(self, fn: FunctionSpec, base_image: str) -> dict[str, str]:
        """stack.yaml's build_args, then --build-arg over them; BASE_IMAGE last, unless given."""
        args = {**fn.build_args}
        if self.pip_no_index is not None:  # an offline builder stays offline inside the build
            args["PIP_NO_INDEX"] = "true" if self.pip_no_index else "false"
        args.update(self.build_args)
        args.setdefault("BASE_IMAGE", base_image)
        return args


def registry_option(f: F) -> F:
    return click.option("--registry", type=REGISTRY, default=None,
                        help="Prefix image names that name no registry with this HOST[:PORT].")(f)


def oci_options(f: F) -> F:
    """The options of an OCI build (build --oci, publish)."""
    # The builder's PIP_NO_INDEX (tests, an air-gapped CI), passed on to the image build.
    f = click.option("--pip-no-index", envvar="PIP_NO_INDEX", type=click.BOOL, hidden=True, default=None)(f)
    f = click.option("--buildah-root", envvar="STREAMFAAS_BUILDAH_ROOT", default=None,
                     type=click.Path(file_okay=False, path_type=Path),
                     help="A private buildah storage (vfs) here instead of buildah's default [$STREAMFAAS_BUILDAH_ROOT].")(f)
    f = click.option("--build-arg", "build_args", type=KEY_VALUE, multiple=True,
                     help="A Dockerfile build argument, KEY=VALUE (over stack.yaml's build_args).")(f)
    f = click.option("--base-image", type=IMAGE, default=None,
                     help=f"The image to build FROM; its Python must be {python_tag()}, as the wheels are "
                          f"(default: the template's, at that Python: {default_base_image()}).")(f)
    return registry_option(f)


def wants_oci(options: OCIOptions) -> bool:
    return bool(options.registry or options.base_image or options.build_args)


def build_oci(ctx: Context, stack: Stack, functions: list[FunctionSpec], options: OCIOptions, *,
              shrinkwrap_only: bool) -> list[tuple[FunctionSpec, str]]:
    """Shrinkwrap each function into ``build/NAME/`` beside stack.yaml; unless
    ``shrinkwrap_only``, build its image with buildah. Returns (function, image name) pairs."""
    console = Console(stderr=True)
    build_root = stack.path.parent / "build"
    if build_root.is_symlink() or not build_root.resolve().is_relative_to(stack.path.parent.resolve()):
        # Each build/NAME is emptied and rewritten: through a link it could be any folder.
        raise click.ClickException(f"{build_root} is a link or leads outside {stack.path.parent}: remove it, it is only a build folder")
    todo = [fn for fn in functions if not fn.skip_build]
    for fn in functions:
        if fn.skip_build:
            console.print("[dim]skip build[/dim]", cell(fn.name))
    if not todo:
        return []
    buildah = options.buildah()
    if not shrinkwrap_only:
        buildah.argv()  # buildah missing: say so before any work
    with console.status("collecting wheels (streamfaas and its dependencies) …"):
        wheels = collect_wheels(ctx.state_dir / "wheelhouse")
    built = []
    for fn in todo:
        context, base = shrinkwrap(fn, build_root, wheels, options.base_image)
        image = image_name(fn.image, options.registry)
        if shrinkwrap_only:
            console.print("[green]shrinkwrapped[/green]", cell(f"{fn.name} → {context}/"))
            continue
        with console.status(f"building {image} ({fn.lang}, FROM {base}) …"):
            build_image(buildah, context, image, options.args_for(fn, base), build_root / f"{fn.name}.buildah.log")
        console.print("[green]built[/green]", cell(f"{fn.name} → {image}"))
        built.append((fn, image))
    return built


def push_functions(images: list[tuple[FunctionSpec, str, str]], buildah: Buildah, tls_verify: bool | None) -> None:
    """Push each (function, local image, destination)."""
    console = Console(stderr=True)
    for fn, source, dest in images:
        with console.status(f"pushing {dest} …"):
            digest = push_image(buildah, source, dest, tls_verify=tls_verify)
        console.print("[green]pushed[/green]", cell(f"{fn.name} → {dest}" + (f" ({digest[:19]})" if digest else "")))


def _tls_option(f: F) -> F:
    return click.option("--tls-verify/--no-tls-verify", default=None,
                        help="Require HTTPS with a valid certificate (default: yes, except for a loopback registry).")(f)


def _stack_functions(ctx: Context, stack_file: str, names: tuple[str, ...]) -> tuple[Stack, list[FunctionSpec]]:
    # Imported here: functions.py imports this module for its build command.
    from .functions import _load, _selected

    stack = _load(ctx, stack_file)
    return stack, _selected(stack, names)


@click.command()
@stack_option
@click.option("--filter", "names", multiple=True, help="Only these functions (names or globs).")
@registry_option
@_tls_option
@click.option("--buildah-root", envvar="STREAMFAAS_BUILDAH_ROOT", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="The private buildah storage the images were built in [$STREAMFAAS_BUILDAH_ROOT].")
@pass_ctx
def push(ctx: Context, stack_file: str, names: tuple[str, ...], registry: str | None, tls_verify: bool | None,
         buildah_root: Path | None) -> None:
    """Push the functions' OCI images (built with `build --oci`) to their registry."""
    _stack, functions = _stack_functions(ctx, stack_file, names)
    buildah = Buildah(root=buildah_root)
    images = []
    for fn in functions:
        if fn.skip_build:
            continue
        dest = image_name(fn.image, registry)
        # Built for this registry, or built without one (`build --oci`) and pushed to it now.
        source = dest if has_image(buildah, dest) else image_name(fn.image, None)
        if not has_image(buildah, source):
            raise ImageBuildError(f"{fn.name}: no image {dest!r} here; build it first with `streamfaas build --oci`")
        images.append((fn, source, dest))
    push_functions(images, buildah, tls_verify)


@click.command()
@stack_option
@click.option("--filter", "names", multiple=True, help="Only these functions (names or globs).")
@oci_options
@_tls_option
@pass_ctx
def publish(ctx: Context, stack_file: str, names: tuple[str, ...], registry: str | None, base_image: str | None,
            build_args: tuple[tuple[str, str], ...], buildah_root: Path | None, pip_no_index: bool | None,
            tls_verify: bool | None) -> None:
    """Build the functions' OCI images and push them (`build --oci`, then `push`)."""
    stack, functions = _stack_functions(ctx, stack_file, names)
    options = OCIOptions(registry, base_image, build_args, buildah_root, pip_no_index)
    built = build_oci(ctx, stack, functions, options, shrinkwrap_only=False)
    push_functions([(fn, image, image) for fn, image in built], options.buildah(), tls_verify)


COMMANDS = [push, publish]
