"""Commands that run parts of the platform in the foreground: gateway, watchdog."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..config import GatewayConfig, parse_duration
from ._options import Context, pass_ctx


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port (0: pick a free one).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where functions, images, venvs and logs live (default: $STREAMFAAS_STATE_DIR or ~/.local/share/streamfaas).")
@click.option("--port-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the port here once listening (useful with --port 0).")
@click.option("--upstream-timeout", default="10m", show_default=True, help="Longest wait for a function's response headers.")
@click.option("--cold-start-timeout", default="60s", show_default=True, help="Longest wait for a replica to start.")
@pass_ctx
def gateway(ctx: Context, host: str, port: int, state_dir: Path | None, port_file: Path | None,
            upstream_timeout: str, cold_start_timeout: str) -> None:
    """Run the platform (gateway + local provider) in the foreground."""
    from ..gateway import run

    config = GatewayConfig(
        host=host,
        port=port,
        state_dir=(state_dir or ctx.state_dir).resolve(),
        upstream_timeout=parse_duration(upstream_timeout, name="--upstream-timeout"),
        cold_start_timeout=parse_duration(cold_start_timeout, name="--cold-start-timeout"),
        port_file=port_file,
    )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    run(config)


@click.command()
def watchdog() -> None:
    """Run one function replica's watchdog (settings from the environment, as of-watchdog)."""
    from ..watchdog import main

    sys.exit(main())


COMMANDS = [gateway, watchdog]
