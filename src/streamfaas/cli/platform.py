"""Commands that run parts of the platform in the foreground: gateway, watchdog."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..config import GatewayConfig, QueueConfig, parse_duration
from ._options import Context, pass_ctx
from .queue import queue_options


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port (0: pick a free one).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where functions, images, venvs and logs live (default: $STREAMFAAS_STATE_DIR or ~/.local/share/streamfaas).")
@click.option("--port-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the port here once listening (useful with --port 0).")
@click.option("--upstream-timeout", default="10m", show_default=True, help="Longest wait for a function's response headers.")
@click.option("--cold-start-timeout", default="60s", show_default=True, help="Longest wait for a replica to start.")
@click.option("--auth/--no-auth", default=True, show_default=True, help="Basic auth on /system and /ui.")
@click.option("--basic-auth-user", default="admin", show_default=True)
@click.option("--basic-auth-password-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Read the admin password from this file (default: generated into STATE/auth/admin-password).")
@click.option("--sandbox/--no-sandbox", default=True, show_default=True, help="Run functions in bubblewrap when available.")
@click.option("--header-timeout", default="10s", show_default=True,
              help="Close a client connection whose request head is not complete this long after it began (0: no limit).")
@click.option("--keepalive-timeout", default="75s", show_default=True,
              help="Close a client connection idle this long between requests (0: close after each response).")
@queue_options(gateway=True)
@pass_ctx
def gateway(ctx: Context, host: str, port: int, state_dir: Path | None, port_file: Path | None,
            upstream_timeout: str, cold_start_timeout: str, auth: bool, basic_auth_user: str,
            basic_auth_password_file: Path | None, sandbox: bool, header_timeout: str, keepalive_timeout: str,
            queue_config: QueueConfig) -> None:
    """Run the platform (gateway + local provider) in the foreground."""
    from ..gateway import run

    config = GatewayConfig(
        host=host,
        port=port,
        state_dir=(state_dir or ctx.state_dir).resolve(),
        upstream_timeout=parse_duration(upstream_timeout, name="--upstream-timeout"),
        cold_start_timeout=parse_duration(cold_start_timeout, name="--cold-start-timeout"),
        port_file=port_file,
        auth=auth,
        auth_user=basic_auth_user,
        auth_password_file=basic_auth_password_file,
        sandbox=sandbox,
        header_timeout=parse_duration(header_timeout, name="--header-timeout"),
        keepalive_timeout=parse_duration(keepalive_timeout, name="--keepalive-timeout"),
        queue=queue_config,
    )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    run(config)


@click.command()
def watchdog() -> None:
    """Run one function replica's watchdog (settings from the environment, as of-watchdog)."""
    from ..watchdog import main

    sys.exit(main())


COMMANDS = [gateway, watchdog]
