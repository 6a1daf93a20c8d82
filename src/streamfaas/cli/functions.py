"""Commands that work on functions: build, deploy, up, invoke, list, describe, remove, logs, scale."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..errors import ConfigError, StackError
from ..provider.images import ImageStore
from ..proxy import is_event_stream
from ..stack import FunctionSpec, Stack, load_stack
from ._options import Context, gateway_option, pass_ctx, stack_option
from ._sse import print_deltas
from .queue import invoke_async


def _load(ctx: Context, stack_file: str) -> Stack:
    stack = load_stack(stack_file)
    if ctx.gateway_from_flag is None and stack.provider.gateway:
        ctx.gateway_url = stack.provider.gateway
    return stack


def _selected(stack: Stack, names: tuple[str, ...]) -> list[FunctionSpec]:
    return list(stack.select(list(names) or None).values())


def deployment_for(fn: FunctionSpec) -> dict[str, Any]:
    """The FunctionDeployment JSON (OpenFaaS's shape) for one stack.yaml function."""
    body: dict[str, Any] = {
        "service": fn.name,
        "image": fn.image,
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


def build_functions(ctx: Context, functions: list[FunctionSpec]) -> None:
    store = ImageStore(ctx.state_dir / "images")
    console = Console(stderr=True)
    for fn in functions:
        if fn.skip_build:
            console.print(f"[dim]skip build[/dim] {fn.name}")
            continue
        if fn.lang is None or fn.handler_path is None:
            raise StackError(f"function {fn.name!r} needs lang and handler to be built")
        with console.status(f"building {fn.name} ({fn.lang}) …"):
            image = store.build(fn.image, fn.lang, fn.handler_path)
        console.print(f"[green]built[/green] {fn.name} → {image.image} ({image.digest[:19]})")


def deploy_functions(ctx: Context, functions: list[FunctionSpec]) -> None:
    client = ctx.client()
    console = Console(stderr=True)
    for fn in functions:
        with console.status(f"deploying {fn.name} …"):
            client.deploy(deployment_for(fn))
        console.print(f"[green]deployed[/green] {fn.name}: {client.url}/function/{fn.name}")


@click.command()
@stack_option
@click.option("--filter", "names", multiple=True, help="Only these functions (names or globs).")
@pass_ctx
def build(ctx: Context, stack_file: str, names: tuple[str, ...]) -> None:
    """Build local images (template + handler) for the functions in stack.yaml."""
    build_functions(ctx, _selected(_load(ctx, stack_file), names))


@click.command()
@stack_option
@gateway_option
@click.option("--filter", "names", multiple=True, help="Only these functions (names or globs).")
@pass_ctx
def deploy(ctx: Context, stack_file: str, names: tuple[str, ...]) -> None:
    """Deploy the functions in stack.yaml (their images must be built)."""
    deploy_functions(ctx, _selected(_load(ctx, stack_file), names))


@click.command()
@stack_option
@gateway_option
@click.option("--filter", "names", multiple=True, help="Only these functions (names or globs).")
@pass_ctx
def up(ctx: Context, stack_file: str, names: tuple[str, ...]) -> None:
    """Build, then deploy, the functions in stack.yaml."""
    functions = _selected(_load(ctx, stack_file), names)
    build_functions(ctx, functions)
    deploy_functions(ctx, functions)


def _pairs(values: tuple[str, ...], what: str) -> list[tuple[str, str]]:
    out = []
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r}: expected KEY=VALUE")
        out.append((key, value))
    return out


@click.command()
@click.argument("name")
@gateway_option
@click.option("-H", "--header", "headers", multiple=True, help="A request header, KEY=VALUE.")
@click.option("--query", "query", multiple=True, help="A query parameter, KEY=VALUE.")
@click.option("-m", "--method", default="POST", show_default=True, help="HTTP method.")
@click.option("--content-type", default="text/plain", show_default=True)
@click.option("--path", "subpath", default="", help="Path after /function/NAME/.")
@click.option("--token", envvar="STREAMFAAS_FUNCTION_TOKEN", default=None, help="Bearer token of a private function.")
@click.option("--async", "async_", is_flag=True, help="Queue it (POST /async-function/NAME); print the call id.")
@click.option("--callback", default=None, help="With --async: POST the result to this URL.")
@click.option("--raw", is_flag=True, help="Print the bytes as they come, even for an event stream.")
@pass_ctx
def invoke(
    ctx: Context, name: str, headers: tuple[str, ...], query: tuple[str, ...], method: str,
    content_type: str, subpath: str, token: str | None, async_: bool, callback: str | None, raw: bool,
) -> None:
    """Invoke a function with stdin as the body; print the response as it streams.

    An event stream of {"content": ...} deltas (a chat function) prints as plain text.
    """
    body = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    hdrs = {"Content-Type": content_type, **dict(_pairs(headers, "header"))}
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    params = _pairs(query, "query")
    if callback and not async_:
        raise click.UsageError("--callback needs --async")
    if async_:
        tail = f"/{subpath.lstrip('/')}" if subpath else ""
        return invoke_async(ctx, name, tail, body=body, headers=hdrs, params=params, callback=callback)
    path = f"/function/{name}" + (f"/{subpath.lstrip('/')}" if subpath else "")
    out = sys.stdout.buffer
    with ctx.client().stream(method.upper(), path, content=body, headers=hdrs, params=params) as resp:
        if resp.status_code >= 400:
            text = resp.read().decode(errors="replace").strip()
            raise click.ClickException(f"{name}: HTTP {resp.status_code}: {text.splitlines()[0] if text else ''}")
        if not raw and is_event_stream(resp.headers.get("content-type")):
            text = print_deltas(resp, sys.stdout)
            if text and not text.endswith("\n"):
                sys.stdout.write("\n")
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
        row = [f["name"], str(int(f.get("invocationCount", 0))), f"{f.get('availableReplicas', 0)}/{f.get('replicas', 0)}"]
        if verbose:
            row += [f.get("image", ""), f.get("createdAt", "")]
        table.add_row(*row)
    Console(width=200).print(table)


@click.command()
@click.argument("name")
@gateway_option
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
@pass_ctx
def describe(ctx: Context, name: str, as_json: bool) -> None:
    """Show one function's details."""
    f = ctx.client().get_function(name)
    if as_json:
        click.echo(json.dumps(f, indent=2))
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
    for key, value in rows:
        click.echo(f"{key + ':':<20}{value}")


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
@click.option("--tail", default=-1, show_default=True, help="Only the last N lines (-1: all).")
@click.option("--since", default=None, help="Only lines at or after this RFC 3339 time.")
@pass_ctx
def logs(ctx: Context, name: str, follow: bool, tail: int, since: str | None) -> None:
    """Print a function's logs; --follow streams new lines."""
    for message in ctx.client().logs(name, tail=tail, follow=follow, since=since):
        click.echo(f"{message.get('timestamp', '')} {message.get('instance', '')} {message.get('text', '')}".strip())
        sys.stdout.flush()  # a follower piped into another program sees each line at once


@click.command()
@click.argument("name")
@click.option("--replicas", "-r", type=click.IntRange(0, 1000), required=True, help="Desired replicas (0 stops them all).")
@gateway_option
@pass_ctx
def scale(ctx: Context, name: str, replicas: int) -> None:
    """Scale a function (to zero, too: the next request starts it again)."""
    ctx.client().scale(name, replicas)
    click.echo(f"scaled {name} to {replicas}", err=True)


COMMANDS = [build, deploy, up, invoke, list_, describe, remove, logs, scale]
