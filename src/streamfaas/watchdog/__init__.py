"""The watchdog: one per function replica, in front of the function's own server.

``main`` starts the function server first and only then imports the HTTP machinery, so the
two processes warm up in parallel (most of a cold start).
"""

from __future__ import annotations

import os
import sys

from ..config import WatchdogConfig
from ..errors import ConfigError, StreamfaasError
from .spawn import spawn_function

__all__ = ["main"]


def main() -> int:
    """Entry point: settings come from the environment, as with of-watchdog."""
    try:
        config = WatchdogConfig.from_env(os.environ)
        spawned = spawn_function(config, os.environ)
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
