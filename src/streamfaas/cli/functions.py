"""Commands that work on functions: build, deploy, up, invoke, list, describe, remove, logs, scale."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from .._oci_build import image_name
from ..errors import DeployError, StackError, StreamfaasError
from ..provider.images import ImageStore
from ..proxy import is_event_stream
from ..stack import FunctionSpec, Stack, load_stack
from ..templates import lay_for_faas_cli
from . import oci as oci_module
from ._client import APIError, GatewayClient
from ._options import Context, gateway_option, pass_ctx, stack_option
from ._sse import StreamEnd, http_error_text, print_deltas
from ._text import cell, lines_printable, printable
from ._types import HEADER, HTTP_METHOD, HTTP_URL, KEY_VALUE, POSITIVE_DURATION, SINCE
from .queue import invoke_async

F = TypeVar("F", bound=Callable[..., Any])


def _load(ctx: Context, stack_file: str) -> Stack:
    stack = load_stack(stack_file)
    if ctx.gateway_from_flag is None and stack.provider.gateway:
        ctx.gateway_url = stack.provider.gateway
    return stack


def _selected(stack: Stack, names: tuple[str, ...]) -> list[FunctionSpec]:
    try:
        return list(stack.select(list(names) or None).values())
    except StackError as exc:  # a --filter that matches no function is a bad argument
        raise click.BadParameter(str(exc), click.get_current_context(), param_hint="'--filter'") from None


def deployment_for(fn: FunctionSpec, registry: str | None = None) -> dict[str, Any]:
    """The FunctionDeployment JSON (OpenFaaS's shape) for one stack.yaml function; with
    ``registry``, an image that names no registry is taken from that one (as pushed there)."""
    body: dict[str, Any] = {
        "service": fn.name,
        "image": image_name(fn.image, registry) if registry else fn.image,
        "envVars": fn.resolved_environment(),
        "secrets": list(fn.secrets),
        "labels": dict(fn.labels),
        "annotations": dict(fn.annotations),
        "constraints": list(fn.constraints),
        "readOnlyRootFilesystem": fn.readonly_root_filesystem,
    }
    if fn.fprocess:
        body["envProcess"] = fn.fprocess
    if fn.namespace:
        body["namespace"] = fn.namespace
    for key in ("limits", "requests"):
        value = getattr(fn, key)
        if value is not None:
            body[key] = value.model_dump(exclude_none=True)
    return body


def build_functions(ctx: Context, functions: list[FunctionSpec], *, template_root: Path | None = None) -> None:
    """Build each function's image; with ``template_root`` (the stack file's folder), also lay
    each template used into ``template_root/template/LANG`` when nothing is there, for
    ``faas-cli deploy -f``."""
    store = ImageStore(ctx.state_dir / "images")
    console = Console(stderr=True)
    for fn in functions:
        if fn.skip_build:
            console.print("[dim]skip build[/dim]", cell(fn.name))
            continue
        if fn.lang is None or fn.handler_path is None:
            raise StackError(f"function {fn.name!r} needs lang and handler to be built")
        with console.status(f"building {fn.name} ({fn.lang}) …"):
            image = store.build(fn.image, fn.lang, fn.handler_path)
        console.print("[green]built[/green]", cell(f"{fn.name} → {image.image} ({image.digest[:19]})"))
        laid = lay_for_faas_cli(fn.lang, template_root) if template_root is not None else None
        if laid is not None:
            console.print(f"[dim]laid the template into {laid}/ for faas-cli[/dim]")


def deploy_functions(ctx: Context, functions: list[FunctionSpec], *, wait: bool = True, timeout: float = 120.0,
                     registry: str | None = None) -> None:
    """Deploy, then (unless ``wait`` is off) wait until each function serves or fails to start.

    The API answers 202 at once, as OpenFaaS's does; readiness is then polled, as
    ``faas-cli ready`` does, on the function's status: ``availableReplicas``, or ``startError``
    (why its replicas fail to start: the end of the function's traceback).
    """
    client = ctx.client()
    console = Console(stderr=True)
    failures: dict[str, str] = {}
    deployed: list[str] = []
    for fn in functions:
        with console.status(f"deploying {fn.name} …"):
            try:
                client.deploy(deployment_for(fn, registry))
            except APIError as exc:
                if exc.http_status == 401:
                    raise
                # A bad setting (400), or an update whose new version did not start (500; the
                # old version still serves): the others are deployed all the same.
                failures[fn.name] = lines_printable(exc.detail)  # a function's start error may be in it
                continue
        deployed.append(fn.name)
    if wait and deployed:
        with console.status(f"waiting for {', '.join(deployed)} to be ready …"):
            failures.update(_wait_ready(client, deployed, timeout))
    for name in deployed:
        if name not in failures:
            console.print("[green]deployed[/green]", cell(f"{name}: {client.url}/function/{name}"))
    if failures:
        raise DeployError("\n".join(f"{name}: {why}" for name, why in failures.items()))


def _wait_ready(client: GatewayClient, names: list[str], timeout: float) -> dict[str, str]:
    """Poll until every function has a ready replica (or is scaled to zero); why others failed."""
    deadline = time.monotonic() + timeout
    pending = list(names)
    failures = {}
    delay = 0.05
    while pending:
        for name in list(pending):
            status = client.get_function(name)
            if status["availableReplicas"] > 0 or status["replicas"] == 0:
                pending.remove(name)
            elif status.get("startError"):
                pending.remove(name)
                failures[name] = f"failed to start (`streamfaas logs {name}` has all its output):\n{lines_printable(str(status['startError']))}"
        if not pending:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            failures.update((name, f"not ready after {timeout:g}s (see `streamfaas logs {name}`)") for name in pending)
            break
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.5)
    return failures


def wait_options(f: F) -> F:
    """``--wait/--no-wait`` and ``--timeout``, for the commands that deploy."""
    f = click.option("--timeout", type=POSITIVE_DURATION, default="2m", show_default=True,
                     help="With --wait: the longest wait for a function to be ready.")(f)
    return click.option("--wait/--no-wait", default=True, show_default=True,
                        help="Wait until each function serves; exit 1 with its error if it fails to start.")(f)


@click.command()
@stack_option
@click.option("--filter", "names", multiple=True, help="Only these functions (names or globs).")
@click.option("--shrinkwrap", is_flag=True, help="Only write each OCI build context to ./build/NAME/, as faas-cli does.")
@click.option("--oci", is_flag=True, help="Build OCI images with buildah (--registry, --base-image, --build-arg imply it).")
@oci_module.oci_options
@pass_ctx
def build(ctx: Context, stack_file: str, names: tuple[str, ...], shrinkwrap: bool, oci: bool, registry: str | None,
          base_image: str | None, build_args: tuple[tuple[str, str], ...], buildah_root: Path | None,
          pip_no_index: bool | None) -> None:
    """Build local images (template + handler) for the functions in stack.yaml, or OCI images.

    Each template used is also laid into ./template/LANG next to stack.yaml, unless something
    is there already, as faas-cli deploy -f needs it. With --oci, each function's build context
    goes to ./build/NAME/ (template, handler, wheels of streamfaas) and buildah builds an image
    whose entrypoint is the watchdog; --shrinkwrap stops after the context."""
    stack = _load(ctx, stack_file)
    options = oci_module.OCIOptions(registry, base_image, build_args, buildah_root, pip_no_index)
    if shrinkwrap or oci or oci_module.wants_oci(options):
        oci_module.build_oci(ctx, stack, _selected(stack, names), options, shrinkwrap_only=shrinkwrap)
        return
    build_functions(ctx, _selected(stack, names), template_root=stack.path.parent)


@click.command()
@stack_option
@gateway_option
@click.option("--filter", "names", multiple=True, help="Only these functions (names or globs).")
@oci_module.registry_option
@wait_options
@pass_ctx
def deploy(ctx: Context, stack_file: str, names: tuple[str, ...], registry: str | None, wait: bool, timeout: float) -> None:
    """Deploy the functions in stack.yaml (their images must be built, or pushed to --registry)."""
    deploy_functions(ctx, _selected(_load(ctx, stack_file), names), wait=wait, timeout=timeout, registry=registry)


@click.command()
@stack_option
@gateway_option
@click.option("--filter", "names", multiple=True, help="Only these functions (names or globs).")
@click.option("--oci", is_flag=True, help="Build OCI images and push them, as faas-cli up does (--registry implies it).")
@oci_module.oci_options
@click.option("--tls-verify/--no-tls-verify", default=None,
              help="With --oci: require HTTPS with a valid certificate (default: yes, except for a loopback registry).")
@wait_options
@pass_ctx
def up(ctx: Context, stack_file: str, names: tuple[str, ...], oci: bool, registry: str | None, base_image: str | None,
       build_args: tuple[tuple[str, str], ...], buildah_root: Path | None, pip_no_index: bool | None,
       tls_verify: bool | None, wait: bool, timeout: float) -> None:
    """Build, then deploy, the functions in stack.yaml. For a gateway on Kubernetes, give
    --registry: images are built with buildah, pushed there, and deployed from there."""
    stack = _load(ctx, stack_file)
    functions = _selected(stack, names)
    options = oci_module.OCIOptions(registry, base_image, build_args, buildah_root, pip_no_index)
    if oci or oci_module.wants_oci(options):
        built = oci_module.build_oci(ctx, stack, functions, options, shrinkwrap_only=False)
        oci_module.push_functions([(fn, image, image) for fn, image in built], options.buildah(), tls_verify)
    else:
        _refuse_local_images_for_kubernetes(ctx)
        build_functions(ctx, functions, template_root=stack.path.parent)
    deploy_functions(ctx, functions, wait=wait, timeout=timeout, registry=registry)


def _refuse_local_images_for_kubernetes(ctx: Context) -> None:
    """Local images mean nothing to a cluster: say so before building any."""
    try:
        info = ctx.client().request("GET", "/system/info").json()
    except (APIError, ValueError, StreamfaasError):
        return  # the deploy step reports an unreachable gateway in its own words
    if isinstance(info, dict) and (info.get("provider") or {}).get("orchestration") == "kubernetes":
        raise click.UsageError(
            "the gateway runs functions on Kubernetes: give --registry HOST[:PORT] "
            "(images are built with buildah, pushed there and deployed from there)"
        )


@click.command()
@click.argument("name")
@gateway_option
@click.option("-H", "--header", "headers", type=HEADER, multiple=True, help="A request header, NAME=VALUE.")
@click.option("--query", "query", type=KEY_VALUE, multiple=True, help="A query parameter, KEY=VALUE.")
@click.option("-m", "--method", type=HTTP_METHOD, default="POST", show_default=True, help="HTTP method.")
@click.option("--content-type", default="text/plain", show_default=True)
@click.option("--path", "subpath", default="", help="Path after /function/NAME/.")
@click.option("--token", envvar="STREAMFAAS_FUNCTION_TOKEN", default=None, help="Bearer token of a private function.")
@click.option("--async", "async_", is_flag=True, help="Queue it (POST /async-function/NAME); print the call id.")
@click.option("--callback", type=HTTP_URL, default=None, help="With --async: POST the result to this URL.")
@click.option("--raw", is_flag=True, help="Print the bytes as they come, even for an event stream.")
@pass_ctx
def invoke(
    ctx: Context, name: str, headers: tuple[tuple[str, str], ...], query: tuple[tuple[str, str], ...], method: str,
    content_type: str, subpath: str, token: str | None, async_: bool, callback: str | None, raw: bool,
) -> None:
    """Invoke a function with stdin as the body; print the response as it streams.

    An event stream of {"content": ...} deltas (a chat function) prints as plain text.
    """
    body = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    hdrs = {"Content-Type": content_type, **dict(headers)}
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    params = list(query)
    if callback and not async_:
        raise click.UsageError("--callback needs --async")
    if async_:
        tail = f"/{subpath.lstrip('/')}" if subpath else ""
        return invoke_async(ctx, name, tail, body=body, headers=hdrs, params=params, callback=callback)
    path = f"/function/{name}" + (f"/{subpath.lstrip('/')}" if subpath else "")
    out = sys.stdout.buffer
    with ctx.client().stream(method, path, content=body, headers=hdrs, params=params) as resp:
        if resp.status_code >= 400:
            raise click.ClickException(f"{name}: HTTP {resp.status_code}: {http_error_text(resp)}")
        if not raw and is_event_stream(resp.headers.get("content-type")):
            end = StreamEnd()
            text = print_deltas(resp, sys.stdout, end)
            if text and not text.endswith("\n"):
                sys.stdout.write("\n")
            note = end.cut_note()
            if note:
                click.echo(f"[{note}]", err=True)
            return
        for chunk in resp.iter_raw():
            out.write(chunk)
            out.flush()


@click.command(name="list")
@gateway_option
@click.option("-v", "--verbose", is_flag=True, help="Show image and creation time.")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
@pass_ctx
def list_(ctx: Context, verbose: bool, as_json: bool) -> None:
    """List deployed functions."""
    items = ctx.client().list_functions()
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("Function")
    table.add_column("Invocations", justify="right")
    table.add_column("Replicas", justify="right")
    if verbose:
        table.add_column("Image")
        table.add_column("Created")
    for f in items:
        row = [cell(f["name"]), cell(int(f.get("invocationCount", 0))), cell(f"{f.get('availableReplicas', 0)}/{f.get('replicas', 0)}")]
        if verbose:
            row += [cell(f.get("image", "")), cell(f.get("createdAt", ""))]
        table.add_row(*row)
    Console(width=200).print(table)


@click.command()
@click.argument("name")
@gateway_option
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
@pass_ctx
def describe(ctx: Context, name: str, as_json: bool) -> None:
    """Show one function's details, and its load, target and replicas as the autoscaler sees them."""
    client = ctx.client()
    f = client.get_function(name)
    scaling = _scaling(client, name)
    if as_json:
        click.echo(json.dumps({**f, "scaling": scaling} if scaling else f, indent=2))
        return
    status = "Ready" if f.get("availableReplicas", 0) > 0 else "Not Ready"
    rows = [
        ("Name", f["name"]),
        ("Status", status),
        ("Replicas", str(f.get("replicas", 0))),
        ("Available Replicas", str(f.get("availableReplicas", 0))),
        ("Invocations", str(int(f.get("invocationCount", 0)))),
        ("Image", f.get("image", "")),
        ("Function Process", f.get("envProcess") or ""),
        ("URL", f"{ctx.gateway_url.rstrip('/')}/function/{f['name']}"),
        ("Async URL", f"{ctx.gateway_url.rstrip('/')}/async-function/{f['name']}"),
        ("Labels", ", ".join(f"{k}={v}" for k, v in sorted(f.get("labels", {}).items()))),
        ("Annotations", ", ".join(f"{k}={v}" for k, v in sorted(f.get("annotations", {}).items()))),
        ("Secrets", ", ".join(f.get("secrets", []))),
        ("Created", f.get("createdAt", "")),
    ]
    if scaling:
        rows += _scaling_rows(scaling)
    if f.get("startError"):  # why it does not start: the end of the function's traceback
        rows.append(("Start Error", lines_printable(str(f["startError"])).replace("\n", "\n" + " " * 20)))
    for key, value in rows:
        click.echo(f"{key + ':':<20}{value if key == 'Start Error' else printable(str(value))}")


def _scaling(client: GatewayClient, name: str) -> dict[str, Any] | None:
    """The gateway's autoscaler view of a function; None from a gateway without one (OpenFaaS)."""
    try:
        data: dict[str, Any] = client.request("GET", f"/system/function/{name}/scaling").json()
    except APIError as exc:
        if exc.http_status in (404, 405):
            return None
        raise
    except ValueError:  # not JSON: not ours
        return None
    return data


def _scaling_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    unit = {"capacity": "requests in flight", "rps": "requests/s", "cpu": "millicores"}.get(s.get("type", ""), "")
    load = s.get("load")
    stable = s.get("stableLoad")
    shown = "-" if load is None else f"{load:g} {unit}"
    if stable is not None:
        shown += f" (stable window mean {stable:g})"
    mode = "on" if s.get("autoscaling") else "off (min = max, or --no-autoscale)"
    if s.get("autoscaling") and s.get("panic"):
        mode += ", panic"
    zero = f"after {s.get('zeroDuration', 0):g}s idle" if s.get("zero") else "no"
    return [
        ("Autoscaling", f"{mode}; {s.get('type')}, replicas {s.get('min')}..{s.get('max')}, to zero: {zero}"),
        ("Load", f"{shown}; {s.get('inflight', 0)} open, {s.get('waiting', 0)} waiting"),
        ("Target", f"{s.get('target')} {unit} per replica × {s.get('targetProportion')}"),
        ("Desired Replicas", f"{s.get('desiredReplicas')} ({s.get('draining', 0)} draining)"),
    ]


@click.command()
@click.argument("names", nargs=-1)
@click.option("-f", "--yaml", "stack_file", default=None, help="Remove every function in this stack.yaml.")
@gateway_option
@pass_ctx
def remove(ctx: Context, names: tuple[str, ...], stack_file: str | None) -> None:
    """Remove functions, by name or all those in a stack.yaml."""
    targets = list(names)
    if stack_file:
        targets += list(_load(ctx, stack_file).functions)
    if not targets:
        raise click.UsageError("name a function, or give -f stack.yaml")
    client = ctx.client()
    for name in targets:
        client.remove(name)
        click.echo(f"removed {name}", err=True)


@click.command()
@click.argument("name")
@gateway_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines as they are written.")
@click.option("--tail", type=click.IntRange(min=-1), default=-1, show_default=True, help="Only the last N lines (-1: all).")
@click.option("--since", type=SINCE, default=None, help="Only lines at or after this RFC 3339 time, or from this long ago (10m).")
@pass_ctx
def logs(ctx: Context, name: str, follow: bool, tail: int, since: str | None) -> None:
    """Print a function's logs; --follow streams new lines."""
    for message in ctx.client().logs(name, tail=tail, follow=follow, since=since):
        line = f"{message.get('timestamp', '')} {message.get('instance', '')} {message.get('text', '')}".strip()
        click.echo(printable(line))
        sys.stdout.flush()  # a follower piped into another program sees each line at once


@click.command()
@click.argument("name")
@click.option("--replicas", "-r", type=click.IntRange(0, 1000), required=True, help="Desired replicas (0 stops them all).")
@gateway_option
@pass_ctx
def scale(ctx: Context, name: str, replicas: int) -> None:
    """Scale a function (to zero, too: the next request starts it again).

    More than the function's com.openfaas.scale.max label allows gets that max."""
    client = ctx.client()
    client.scale(name, replicas)
    got = client.get_function(name)["replicas"]
    clamped = f" (its com.openfaas.scale.max; {replicas} were asked for)" if got < replicas else ""
    click.echo(f"scaled {name} to {got}{clamped}", err=True)


COMMANDS = [build, deploy, up, invoke, list_, describe, remove, logs, scale, *oci_module.COMMANDS]
