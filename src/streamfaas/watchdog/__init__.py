"""The watchdog: one per function replica, in front of the function's own server."""

from __future__ import annotations

import asyncio
import os
import sys

from ..config import WatchdogConfig
from ..errors import ConfigError, StreamfaasError
from .server import create_app, run

__all__ = ["create_app", "main", "run"]


def main() -> int:
    """Entry point: settings come from the environment, as with of-watchdog."""
    try:
        config = WatchdogConfig.from_env(os.environ)
    except ConfigError as exc:
        print(f"watchdog: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        return runner(run(config))
    except StreamfaasError as exc:
        print(f"watchdog: {exc}", file=sys.stderr)
        return 2
