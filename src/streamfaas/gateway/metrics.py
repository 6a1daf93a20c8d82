"""``/metrics``: Prometheus text format."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import StreamfaasError
from .auth import is_private
from .invoke import qualified_name
from .state import state_of


async def metrics_endpoint(request: web.Request) -> web.Response:
    state = state_of(request)
    metrics = state.metrics
    hidden: set[bytes] = set()
    admin = state.credentials is None or state.credentials.matches(request.headers.get("Authorization"))
    provider = state.provider
    for status in provider.statuses():
        metrics.service_count.labels(function_name=status.name).set(status.availableReplicas)
    if not admin:
        for namespace in provider.namespaces():  # a private function in any of them (Kubernetes)
            try:
                statuses = provider.statuses(namespace)
            except StreamfaasError:
                continue  # a namespace that cannot be read now
            own = "" if namespace == provider.default_namespace else namespace
            for status in statuses:
                if is_private(status.labels, status.annotations):
                    for label in {status.name, qualified_name(status.name, own)}:
                        hidden.add(b'function_name="%s"' % label.encode())
    body = metrics.render()
    if hidden:
        # A private function's series are the admin's to see: without them an anonymous caller
        # learns neither its name nor how much, and how successfully, others call it.
        body = b"\n".join(line for line in body.split(b"\n") if not any(h in line for h in hidden))
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp
