"""What one gateway process holds: its settings, its provider (whose replicas hold the upstream clients)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from ..admission import Admission
from ..config import GatewayConfig
from ..provider.base import Provider
from .auth import Credentials
from .journal import Journal
from .metrics_registry import GatewayMetrics


@dataclass
class GatewayState:
    config: GatewayConfig
    provider: Provider
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    credentials: Credentials | None = None
    journal: Journal = field(default_factory=lambda: Journal(64 * 1024 * 1024))
    admission: Admission = field(default_factory=Admission)


STATE_KEY = web.AppKey("streamfaas_state", GatewayState)


def state_of(request: web.Request) -> GatewayState:
    return request.app[STATE_KEY]
