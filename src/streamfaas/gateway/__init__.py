"""The gateway: ``/function/*`` streaming proxy, ``/system/*`` API, health."""

from __future__ import annotations

import asyncio

from ..config import GatewayConfig
from .app import create_app, serve

__all__ = ["create_app", "run", "serve"]


def run(config: GatewayConfig) -> None:
    try:
        import uvloop

        uvloop.run(serve(config))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(serve(config))
