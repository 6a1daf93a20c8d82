"""The watchdog: one per function replica, in front of the function's own server.

``main`` starts the function server first and only then imports the HTTP machinery, so the
two processes warm up in parallel (most of a cold start). In of-watchdog's other modes there
is no function server: ``streaming`` and ``serializing`` start ``fprocess`` per request,
``static`` serves a folder.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping

from .._process import kill_group, raise_open_files_limit
from ..config import WATCHDOG_PLATFORM_ONLY, WatchdogConfig
from ..errors import ConfigError, StreamfaasError
from .spawn import RequestCommand, Spawned, request_command, spawn_function
from .start_report import report_failure

# Set by the local provider: the function's environment, as JSON. The watchdog's own process
# runs with a fixed environment the platform chose; the function's (PYTHONPATH, LD_PRELOAD …)
# is applied to the function process only.
FUNCTION_ENV = "STREAMFAAS_FUNCTION_ENV"
# Settings only the platform gives a provider-run watchdog (the list lives beside the parser,
# which the gateway's deploy-time check shares).
PLATFORM_ONLY = WATCHDOG_PLATFORM_ONLY


def split_environment(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(the watchdog's settings, the function's environment) from the watchdog's environment."""
    raw = env.get(FUNCTION_ENV)
    if raw is None:  # run by hand, as of-watchdog: one environment for both
        return dict(env), {k: v for k, v in env.items() if k != "STREAMFAAS_SANDBOX"}
    try:
        function_env = json.loads(raw)
        if not isinstance(function_env, dict):
            raise ValueError("not an object")
        function_env = {str(k): str(v) for k, v in function_env.items() if k not in PLATFORM_ONLY}
    except ValueError as exc:
        raise ConfigError(f"{FUNCTION_ENV}: invalid JSON ({exc})") from None
    settings = {**function_env, **{k: env[k] for k in PLATFORM_ONLY if k in env}}
    return settings, function_env

__all__ = ["main"]


def _report(reason: str) -> None:
    """A start that failed before the settings were read: tell the provider, on the pipe it
    gave us (its number is the platform's, in our own environment, never the function's)."""
    fd = os.environ.get("STREAMFAAS_READY_FD", "")
    report_failure(int(fd) if fd.isdigit() else None, reason)


def main() -> int:
    """Entry point: settings come from the environment, as with of-watchdog."""
    raise_open_files_limit()  # two descriptors a stream; the function server inherits it too
    # A stop asked for while the function starts is only noted here, and honoured once the
    # server's loop handles signals: killed by the default action instead, the watchdog would
    # leave the function it was starting running (its finally below would never run).
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    try:
        settings, function_env = split_environment(os.environ)
        config = WatchdogConfig.from_env(settings)
        backend: Spawned | RequestCommand | str
        if config.mode == "http":
            backend = spawn_function(config, function_env, settings)
        elif config.mode == "static":
            from .static import static_root

            backend = static_root(config, settings)
        else:
            backend = request_command(config, function_env, settings)
    except ConfigError as exc:
        print(f"watchdog: {exc}", file=sys.stderr)
        _report(f"watchdog: {exc}")
        return 2
    except StreamfaasError as exc:
        print(f"watchdog: {exc}", file=sys.stderr)
        _report(f"watchdog: {exc}")
        return 1
    import asyncio

    from .server import run

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        return runner(run(config, backend, stopping))
    except StreamfaasError as exc:
        print(f"watchdog: {exc}", file=sys.stderr)
        return 2
    finally:
        if isinstance(backend, Spawned) and backend.popen.poll() is None:  # never leave the function server behind
            kill_group(backend.popen.pid, signal.SIGKILL)  # its group holds the sandbox's init too
            backend.popen.wait()
