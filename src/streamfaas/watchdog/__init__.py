"""The watchdog: one per function replica, in front of the function's own server.

``main`` starts the function server first and only then imports the HTTP machinery, so the
two processes warm up in parallel (most of a cold start).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

from ..config import WatchdogConfig
from ..errors import ConfigError, StreamfaasError
from .spawn import spawn_function

# Set by the local provider: the function's environment, as JSON. The watchdog's own process
# runs with a fixed environment the platform chose; the function's (PYTHONPATH, LD_PRELOAD …)
# is applied to the function process only.
FUNCTION_ENV = "STREAMFAAS_FUNCTION_ENV"
# Settings only the platform gives a provider-run watchdog; a function's environment cannot
# set or override them (e.g. point the watchdog at another upstream).
PLATFORM_ONLY = ("STREAMFAAS_LISTEN_FD", "STREAMFAAS_READY_FD", "STREAMFAAS_REPLICA", "STREAMFAAS_FUNCTION",
                 "STREAMFAAS_SANDBOX", "STREAMFAAS_FUNCTION_SOCKET", "upstream_url", "port",
                 "STREAMFAAS_WATCHDOG_HOST")


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


def main() -> int:
    """Entry point: settings come from the environment, as with of-watchdog."""
    try:
        settings, function_env = split_environment(os.environ)
        config = WatchdogConfig.from_env(settings)
        spawned = spawn_function(config, function_env, settings)
    except ConfigError as exc:
        print(f"watchdog: {exc}", file=sys.stderr)
        return 2
    except StreamfaasError as exc:
        print(f"watchdog: {exc}", file=sys.stderr)
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
        return runner(run(config, spawned))
    except StreamfaasError as exc:
        print(f"watchdog: {exc}", file=sys.stderr)
        return 2
    finally:
        if spawned.popen.poll() is None:  # never leave the function server behind
            spawned.popen.kill()
            spawned.popen.wait()
