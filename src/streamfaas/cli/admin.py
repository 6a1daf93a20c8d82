"""Commands for access and configuration: login, logout, secret, namespace."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from ..errors import BadRequest
from . import _credentials
from ._client import APIError, GatewayClient
from ._options import Context, gateway_option, pass_ctx
from ._text import cell, printable


@click.command()
@gateway_option
@click.option("-u", "--username", default="admin", show_default=True)
@click.option(
    "-p",
    "--password",
    default=None,
    help="The password (visible in the process list: prefer --password-stdin).",
)
@click.option("-s", "--password-stdin", is_flag=True, help="Read the password from stdin.")
@pass_ctx
def login(ctx: Context, username: str, password: str | None, password_stdin: bool) -> None:
    """Check and store credentials for a gateway (in faas-cli's config file)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    if password is None:
        raise click.UsageError("give --password-stdin (or --password)")
    if not password:
        raise click.UsageError("the password is empty")
    if not password_stdin:
        click.echo(
            "WARNING: --password is visible in the process list; prefer --password-stdin", err=True
        )
    client = GatewayClient(ctx.gateway_url, auth=(username, password))
    try:
        client.request("GET", "/system/functions")
    except APIError as exc:
        if exc.http_status == 401:
            raise click.ClickException(
                f"wrong username or password for {ctx.gateway_url}"
            ) from None
        raise
    finally:
        client.close()
    path = _credentials.store(ctx.gateway_url, username, password)
    click.echo(f"credentials saved for {username} @ {ctx.gateway_url} in {path}", err=True)


@click.command()
@gateway_option
@pass_ctx
def logout(ctx: Context) -> None:
    """Forget the stored credentials for a gateway."""
    if _credentials.forget(ctx.gateway_url):
        click.echo(f"credentials removed for {ctx.gateway_url}", err=True)
    else:
        click.echo(f"no credentials stored for {ctx.gateway_url}", err=True)


def _read_value(literal: str | None, from_file: Path | None) -> tuple[str, str]:
    """The secret as a JSON field: ("value", text) or ("rawValue", base64) for binary files."""
    if literal is not None and from_file is not None:
        raise click.UsageError("give --from-literal or --from-file, not both")
    if literal is not None:
        return "value", literal
    data = from_file.read_bytes() if from_file is not None else sys.stdin.buffer.read()
    if not data:
        raise BadRequest("the secret value is empty")
    try:
        return "value", data.decode("utf-8")
    except UnicodeDecodeError:
        return "rawValue", base64.b64encode(data).decode()


@click.group()
def secret() -> None:
    """Secrets: files a function reads at /var/openfaas/secrets/NAME."""


F = TypeVar("F", bound=Callable[..., Any])


def _value_options(f: F) -> F:
    f = click.option(
        "--from-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="Read the value from a file.",
    )(f)
    f = click.option(
        "--from-literal",
        default=None,
        help="The value (visible in the process list: prefer stdin or --from-file).",
    )(f)
    return f


@secret.command(name="create")
@click.argument("name")
@_value_options
@gateway_option
@pass_ctx
def secret_create(
    ctx: Context, name: str, from_literal: str | None, from_file: Path | None
) -> None:
    """Create a secret from --from-literal, --from-file, or stdin."""
    key, value = _read_value(from_literal, from_file)
    ctx.client().request("POST", "/system/secrets", json_body={"name": name, key: value})
    click.echo(f"created secret {name}", err=True)


@secret.command(name="update")
@click.argument("name")
@_value_options
@gateway_option
@pass_ctx
def secret_update(
    ctx: Context, name: str, from_literal: str | None, from_file: Path | None
) -> None:
    """Replace a secret's value; functions see the new value in their file."""
    key, value = _read_value(from_literal, from_file)
    ctx.client().request("PUT", "/system/secrets", json_body={"name": name, key: value})
    click.echo(f"updated secret {name}", err=True)


@secret.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
@gateway_option
@pass_ctx
def secret_list(ctx: Context, as_json: bool) -> None:
    """List secret names (never values)."""
    items = ctx.client().request("GET", "/system/secrets").json()
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("NAME")
    table.add_column("NAMESPACE")
    for item in items:
        table.add_row(cell(item["name"]), cell(item.get("namespace", "")))
    Console(width=200).print(table)


@secret.command(name="remove")
@click.argument("name")
@gateway_option
@pass_ctx
def secret_remove(ctx: Context, name: str) -> None:
    """Remove a secret (refused while a function uses it)."""
    ctx.client().request("DELETE", "/system/secrets", json_body={"name": name})
    click.echo(f"removed secret {name}", err=True)


@click.group()
def namespace() -> None:
    """Namespaces (the local provider has one: openfaas-fn)."""


@namespace.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
@gateway_option
@pass_ctx
def namespace_list(ctx: Context, as_json: bool) -> None:
    """List namespaces."""
    items = ctx.client().request("GET", "/system/namespaces").json()
    click.echo(json.dumps(items) if as_json else "\n".join(printable(str(item)) for item in items))


@click.command()
@click.argument("name")
@gateway_option
@pass_ctx
def token(ctx: Context, name: str) -> None:
    """Print a private function's bearer token (for `invoke --token` or `Authorization: Bearer`)."""
    click.echo(printable(str(ctx.client().request("GET", f"/system/function-token/{name}").json()["token"])))


COMMANDS = [login, logout, secret, namespace, token]
