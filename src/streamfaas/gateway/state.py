"""What one gateway process holds: its settings, its provider and its upstream client."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from ..config import GatewayConfig
from ..provider import LocalProvider
from .auth import Credentials
from .metrics_registry import GatewayMetrics


@dataclass
class GatewayState:
    config: GatewayConfig
    provider: LocalProvider
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    credentials: Credentials | None = None
    session: aiohttp.ClientSession = field(init=False)


STATE_KEY = web.AppKey("streamfaas_state", GatewayState)


def state_of(request: web.Request) -> GatewayState:
    return request.app[STATE_KEY]
