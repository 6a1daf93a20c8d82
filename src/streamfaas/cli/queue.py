"""Async invocations from the command line: ``invoke --async``, ``queue list|retry|purge``,
``queue-worker``, and the queue flags shared by ``gateway`` and ``queue-worker``."""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from ..config import IPNetwork, QueueConfig, parse_network
from ..errors import ConfigError
from ._credentials import lookup
from ._options import Context, flag_errors, gateway_option, pass_ctx
from ._text import cell, printable
from ._types import DURATION, HTTP_URLS, POSITIVE_DURATION, SIZE, _ParamType

F = TypeVar("F", bound=Callable[..., Any])


class Network(_ParamType):
    """A network in CIDR notation (``10.0.0.0/8``) or one address; gives an ip_network."""

    name = "cidr"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> IPNetwork:
        if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
            return value
        try:
            return parse_network(str(value), name="value")
        except ConfigError as exc:
            self.fail(str(exc).removeprefix("value: "), param, ctx)


_SHARED = [
    click.option("--queue", "q_backend", type=click.Choice(["sqlite", "nats"]), default="sqlite", show_default=True,
                 envvar="STREAMFAAS_QUEUE", help="Where async jobs are kept: an embedded SQLite file, or NATS JetStream."),
    click.option("--queue-db", "q_sqlite_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="The SQLite queue's file (default: STATE/queue.db)."),
    click.option("--nats-url", "q_nats_url", default="nats://127.0.0.1:4222", show_default=True, envvar="NATS_URL",
                 help="NATS server(s) for --queue nats (comma-separated)."),
    click.option("--nats-stream", "q_nats_stream", default="STREAMFAAS_ASYNC", show_default=True,
                 help="JetStream stream of the jobs (dead letters: STREAM_FAILED)."),
    click.option("--queue-concurrency", "q_concurrency", type=click.IntRange(1, 10_000), default=8, show_default=True,
                 help="Jobs of one function a worker runs at once."),
    click.option("--queue-max-retries", "q_max_retries", type=click.IntRange(0, 1000), default=5, show_default=True,
                 help="Failed attempts retried before a job is dead-lettered."),
    click.option("--queue-backoff", "q_backoff", type=DURATION, default="1s", show_default=True,
                 help="Delay before the first retry; doubled for each one after."),
    click.option("--queue-backoff-max", "q_backoff_max", type=DURATION, default="1m", show_default=True, help="Longest retry delay."),
    click.option("--queue-lease", "q_lease", type=POSITIVE_DURATION, default="30s", show_default=True,
                 help="A job whose worker died runs again after this (a live worker renews it)."),
    click.option("--queue-drain-timeout", "q_drain_timeout", type=DURATION, default="30s", show_default=True,
                 help="On shutdown, in-flight jobs get this long to finish, then go back to the queue (0: at once)."),
    click.option("--queue-invoke-timeout", "q_invoke_timeout", type=DURATION, default="10m", show_default=True,
                 help="Longest run of one attempt."),
    click.option("--queue-callback-timeout", "q_callback_timeout", type=DURATION, default="30s", show_default=True,
                 help="Longest wait for a callback URL to answer."),
    click.option("--queue-max-bytes", "q_max_bytes", type=SIZE, default="1GiB", show_default=True,
                 help="What the queue may hold, its jobs and dead letters together: an async call past it "
                      "gets 503 (0: no limit). With NATS, the jobs stream's max_bytes (and the dead letters' own)."),
    click.option("--max-async-response", "q_max_response", type=SIZE, default="64MiB", show_default=True,
                 help="Largest answer a worker takes from a function for a job (it holds it whole, "
                      "for the callback): a bigger one is dead-lettered (0: no limit)."),
    click.option("--callback-allow", "q_callback_allow", type=Network(), multiple=True, default=(), metavar="CIDR",
                 help="Let callbacks go to this network too (repeatable), e.g. 127.0.0.1/32 or 10.0.0.0/8. "
                      "By default a callback goes only to public addresses: never loopback, link-local or private."),
]
_GATEWAY_ONLY = [
    click.option("--max-async-body", "q_max_body", type=SIZE, default="1MiB", show_default=True,
                 help="Largest /async-function request body (bigger: 413)."),
    click.option("--queue-worker/--no-queue-worker", "q_worker", default=True, show_default=True,
                 help="Run a queue worker inside the gateway (off: run `streamfaas queue-worker`)."),
]


def queue_config(values: dict[str, Any]) -> QueueConfig:
    """The QueueConfig of the parsed queue flags (``q_*``), as click's types gave them."""
    with flag_errors():
        return QueueConfig(
            backend=values["q_backend"],
            sqlite_path=values["q_sqlite_path"].resolve() if values["q_sqlite_path"] else None,
            nats_url=values["q_nats_url"],
            nats_stream=values["q_nats_stream"],
            max_body=values.get("q_max_body", QueueConfig.max_body),
            max_response=values["q_max_response"],
            max_bytes=values["q_max_bytes"],
            worker=values.get("q_worker", True),
            concurrency=values["q_concurrency"],
            max_retries=values["q_max_retries"],
            backoff=values["q_backoff"],
            backoff_max=values["q_backoff_max"],
            lease=values["q_lease"],
            drain_timeout=values["q_drain_timeout"],
            invoke_timeout=values["q_invoke_timeout"],
            callback_timeout=values["q_callback_timeout"],
            callback_allow=tuple(values["q_callback_allow"]),
        )


def queue_options(*, gateway: bool) -> Callable[[F], F]:
    """Add the queue flags to a command; it receives them as one ``queue_config`` argument."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("q_")}
            kwargs["queue_config"] = queue_config(values)
            return f(*args, **kwargs)

        command: Any = wrapper
        for option in reversed(_SHARED + (_GATEWAY_ONLY if gateway else [])):
            command = option(command)
        return command  # type: ignore[no-any-return]

    return decorate


# ---- invoke --async ----
def invoke_async(ctx: Context, name: str, path: str, *, body: bytes, headers: dict[str, str],
                 params: list[tuple[str, str]], callback: str | None) -> None:
    """POST to /async-function/NAME; print the call id (stdout) once the gateway has stored it."""
    if callback:
        headers = {**headers, "X-Callback-Url": callback}
    with ctx.client().stream("POST", f"/async-function/{name}{path}", content=body, headers=headers, params=params) as resp:
        text = resp.read().decode(errors="replace").strip()
        if resp.status_code != 202:
            raise click.ClickException(f"{name}: HTTP {resp.status_code}: {text.splitlines()[0] if text else ''}")
        call_id = resp.headers.get("X-Call-Id", "")
    click.echo(printable(call_id))
    click.echo(f"accepted: {name} runs asynchronously" + (f", result to {callback}" if callback else ""), err=True)


# ---- queue list | retry | purge ----
@click.group(name="queue")
def queue_group() -> None:
    """Async invocations waiting, running or dead-lettered (the gateway's /system/queue)."""


def _when(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@queue_group.command(name="list")
@gateway_option
@click.option("--failed", is_flag=True, help="The dead-letter list instead of the queue.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
@pass_ctx
def queue_list(ctx: Context, failed: bool, limit: int, as_json: bool) -> None:
    """List queued jobs (or, with --failed, dead-lettered ones)."""
    params = {"failed": "true" if failed else "false", "limit": str(limit)}
    data = ctx.client().request("GET", "/system/queue", params=params).json()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for column in ("Call ID", "Function", "Attempts", "Submitted", "Callback", "Last error"):
        table.add_column(column)
    for job in data["jobs"]:
        table.add_row(*map(cell, (job["callId"], job["function"], job["attempts"], _when(job["submittedAt"]),
                                  job.get("callbackUrl") or "", job.get("lastError") or "")))
    Console(width=200).print(table)
    depth = data["depth"]
    click.echo(printable(f"{depth['pending']} queued, {depth['failed']} dead-lettered"), err=True)


@queue_group.command(name="retry")
@click.argument("call_id", required=False)
@click.option("--all", "retry_all", is_flag=True, help="Every dead-lettered job.")
@gateway_option
@pass_ctx
def queue_retry(ctx: Context, call_id: str | None, retry_all: bool) -> None:
    """Queue a dead-lettered job again (by call id, or --all), with fresh attempts."""
    if bool(call_id) == retry_all:
        raise click.UsageError("give a CALL_ID or --all")
    body: dict[str, Any] = {"all": True} if retry_all else {"callId": call_id}
    count = ctx.client().request("POST", "/system/queue/retry", json_body=body).json()["retried"]
    click.echo(printable(f"retried {count} job{'s' if count != 1 else ''}"), err=True)


@queue_group.command(name="purge")
@click.option("--failed", is_flag=True, help="Empty the dead-letter list instead of the queue.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask.")
@gateway_option
@pass_ctx
def queue_purge(ctx: Context, failed: bool, yes: bool) -> None:
    """Drop every queued job (or, with --failed, every dead-lettered one)."""
    what = "dead-lettered" if failed else "queued (not yet done)"
    if not yes:
        click.confirm(f"Drop every {what} job at {ctx.gateway_url}?", abort=True)
    params = {"failed": "true" if failed else "false"}
    count = ctx.client().request("DELETE", "/system/queue", params=params).json()["purged"]
    click.echo(printable(f"purged {count} job{'s' if count != 1 else ''}"), err=True)


# ---- queue-worker ----
def _gateway_urls(ctx: click.Context, param: click.Parameter, values: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
    """The -g values (each split at commas and checked by HTTP_URLS); none given: the CLI's gateway."""
    from ..queue.gateways import parse_gateway_urls

    urls = [url for value in values for url in value]
    if values and not urls:
        raise click.BadParameter("no gateway URL given", ctx, param)
    if not urls:
        return ()
    chosen = parse_gateway_urls(urls)
    ctx.ensure_object(Context).gateway_url = chosen[0]
    return chosen


@click.command(name="queue-worker")
@click.option("-g", "--gateway", "gateways", type=HTTP_URLS, multiple=True, metavar="URL", callback=_gateway_urls,
              help="Gateway URL to run jobs through (default: $OPENFAAS_URL or http://127.0.0.1:8080). Several "
                   "(repeated, or comma-separated): jobs go to each in turn, and one that refuses connections is "
                   "skipped for the others.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the SQLite queue lives (as the gateway's; default $STREAMFAAS_STATE_DIR).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve this worker's Prometheus metrics on 127.0.0.1:PORT/metrics (0: any free port).")
@queue_options(gateway=False)
@pass_ctx
def queue_worker(ctx: Context, gateways: tuple[str, ...], state_dir: Path | None, metrics_port: int | None,
                 queue_config: QueueConfig) -> None:
    """Run async jobs through the gateway(s) (next to, or instead of, the gateway's own worker)."""
    from ..queue.standalone import run_worker

    state = (state_dir or ctx.state_dir).resolve()
    if state_dir is not None:
        ctx.state_dir = state
    urls = gateways or (ctx.gateway_url.rstrip("/"),)
    run_worker(queue_config, urls, state, auths={url: lookup(url, state) for url in urls}, metrics_port=metrics_port)


COMMANDS = [queue_group, queue_worker]
