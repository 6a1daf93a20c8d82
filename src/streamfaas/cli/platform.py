"""Commands that run parts of the platform in the foreground: gateway, watchdog."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..admission import DEFAULT_PER_TURN
from ..config import AUTOSCALE_TYPES, AutoscaleConfig, GatewayConfig, QueueConfig
from ._options import Context, flag_errors, pass_ctx
from ._types import DURATION, K8S_NAME, POSITIVE_DURATION, SIZE
from .queue import queue_options

F = TypeVar("F", bound=Callable[..., Any])


def autoscale_options(f: F) -> F:
    """The autoscaler's flags; the command receives them as one ``autoscale_config`` argument."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {k.removeprefix("a_"): kwargs.pop(k) for k in list(kwargs) if k.startswith("a_")}
        with flag_errors():
            kwargs["autoscale_config"] = AutoscaleConfig(**values)
        return f(*args, **kwargs)

    options = [
        click.option("--autoscale/--no-autoscale", "a_enabled", default=True, show_default=True,
                     help="Scale functions on their load (com.openfaas.scale.* labels); off: only by hand."),
        click.option("--autoscale-interval", "a_interval", type=POSITIVE_DURATION, default="1s", show_default=True,
                     help="How often the autoscaler looks at every function's load."),
        click.option("--autoscale-stable-window", "a_stable_window", type=POSITIVE_DURATION, default="60s", show_default=True,
                     help="Load is averaged over this to size a function; it scales down only on it."),
        click.option("--autoscale-panic-window", "a_panic_window", type=POSITIVE_DURATION, default="6s", show_default=True,
                     help="A peak over twice the capacity within this scales up at once."),
        click.option("--scale-default-type", "a_default_type", type=click.Choice(AUTOSCALE_TYPES), default="capacity",
                     show_default=True, help="com.openfaas.scale.type of functions that do not set it."),
        click.option("--scale-default-target", "a_default_target", type=click.IntRange(1, 1_000_000), default=50,
                     show_default=True, help="com.openfaas.scale.target of functions that do not set it."),
        click.option("--scale-default-zero-duration", "a_default_zero_duration", type=POSITIVE_DURATION, default="15m",
                     show_default=True, help="com.openfaas.scale.zero-duration of functions that do not set it."),
    ]
    command: Any = wrapper
    for option in reversed(options):
        command = option(command)
    return command  # type: ignore[no-any-return]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port (0: pick a free one).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where functions, images, venvs and logs live (default: $STREAMFAAS_STATE_DIR or ~/.local/share/streamfaas).")
@click.option("--port-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the port here once listening (useful with --port 0).")
@click.option("--upstream-timeout", type=DURATION, default="10m", show_default=True, help="Longest wait for a function's response headers.")
@click.option("--cold-start-timeout", type=DURATION, default="60s", show_default=True, help="Longest wait for a replica to start.")
@click.option("--auth", "auth_mode", type=click.Choice(["basic", "none"]), default=None, is_flag=False, flag_value="basic",
              help="basic (the default): the admin's basic auth on /system and /ui. none: no auth at all, for a "
                   "trusted machine: it listens on loopback only (unless --i-know-no-auth-is-public) and warns at start.")
@click.option("--no-auth", is_flag=True, help="Same as --auth none.")
@click.option("--i-know-no-auth-is-public", "public_without_auth", is_flag=True,
              help="Let --auth none listen on a --host that other machines reach.")
@click.option("--metrics-auth", is_flag=True, help="Put /metrics behind the admin's basic auth too (default: public).")
@click.option("--basic-auth-user", default="admin", show_default=True)
@click.option("--basic-auth-password-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Read the admin password from this file (default: generated into STATE/auth/admin-password).")
@click.option("--sandbox/--no-sandbox", default=True, show_default=True, help="Run functions in bubblewrap when available.")
@click.option("--header-timeout", type=DURATION, default="10s", show_default=True,
              help="Close a client connection whose request head is not complete this long after it began (0: no limit).")
@click.option("--keepalive-timeout", type=DURATION, default="75s", show_default=True,
              help="Close a client connection idle this long between requests (0: close after each response).")
@click.option("--stream-history-interval", type=DURATION, default="5s", show_default=True,
              help="How often the gateway samples its stream metrics for the UI's charts (it keeps the last 5 minutes).")
@click.option("--provider", "provider", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True,
              help="Where functions run: local processes, or a Kubernetes cluster (Deployments, Services, Secrets).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path), default=None, envvar="KUBECONFIG",
              help="--provider kubernetes: the cluster's kubeconfig (default: $KUBECONFIG; else the pod's service "
                   "account when running in one, else ~/.kube/config).")
@click.option("--namespace", type=K8S_NAME, default="openfaas-fn", show_default=True,
              help="--provider kubernetes: the functions namespace (others labelled openfaas=1 are served too).")
@click.option("--resume-journal-bytes", type=SIZE, default="64MiB", show_default=True,
              help="Memory for the journals of resumable streams (stream_resume), all together; the oldest bytes go first.")
@click.option("--admit-per-turn", type=click.IntRange(min=0), default=DEFAULT_PER_TURN, show_default=True,
              help="Function requests that start in one turn of the event loop; the rest wait for the next turns, "
                   "in order, so a burst of new streams does not hold back the events of open ones (0: no limit).")
@queue_options(gateway=True)
@autoscale_options
@pass_ctx
def gateway(ctx: Context, host: str, port: int, state_dir: Path | None, port_file: Path | None,
            upstream_timeout: float, cold_start_timeout: float, auth_mode: str | None, no_auth: bool,
            public_without_auth: bool, metrics_auth: bool, basic_auth_user: str,
            basic_auth_password_file: Path | None, sandbox: bool, header_timeout: float, keepalive_timeout: float,
            stream_history_interval: float,
            provider: str, kubeconfig: Path | None, namespace: str, resume_journal_bytes: int, admit_per_turn: int,
            queue_config: QueueConfig, autoscale_config: AutoscaleConfig) -> None:
    """Run the platform (gateway + its provider) in the foreground."""
    from ..gateway import run

    if no_auth and auth_mode == "basic":
        raise click.UsageError("--auth basic and --no-auth contradict each other")
    auth = not no_auth and auth_mode != "none"
    with flag_errors():
        config = GatewayConfig(
            host=host,
            port=port,
            state_dir=(state_dir or ctx.state_dir).resolve(),
            upstream_timeout=upstream_timeout,
            cold_start_timeout=cold_start_timeout,
            port_file=port_file,
            auth=auth,
            auth_user=basic_auth_user,
            auth_password_file=basic_auth_password_file,
            public_without_auth=public_without_auth,
            metrics_auth=metrics_auth,
            sandbox=sandbox,
            header_timeout=header_timeout,
            keepalive_timeout=keepalive_timeout,
            stream_history_interval=stream_history_interval,
            queue=queue_config,
            provider=provider,
            kubeconfig=kubeconfig,
            namespace=namespace,
            autoscale=autoscale_config,
            resume_journal_bytes=resume_journal_bytes,
            admit_per_turn=admit_per_turn,
        )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    run(config)


@click.command()
def watchdog() -> None:
    """Run one function replica's watchdog (settings from the environment, as of-watchdog)."""
    from ..watchdog import main

    sys.exit(main())


COMMANDS = [gateway, watchdog]
