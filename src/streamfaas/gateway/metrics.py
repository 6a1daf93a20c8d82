"""``/metrics``: Prometheus text format."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .state import state_of


async def metrics_endpoint(request: web.Request) -> web.Response:
    state = state_of(request)
    metrics = state.metrics
    for status in state.provider.statuses():
        metrics.service_count.labels(function_name=status.name).set(status.availableReplicas)
    resp = web.Response(body=metrics.render())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp
