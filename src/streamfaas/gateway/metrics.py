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
    hidden: set[bytes] = set()  # function_name="…" label values
    hidden_namespaces: set[bytes] = set()  # '.NAMESPACE"': a namespace that could not be read
    admin = state.credentials is None or state.credentials.matches(request.headers.get("Authorization"))
    provider = state.provider
    default = provider.statuses()
    for status in default:
        metrics.service_count.labels(function_name=status.name).set(status.availableReplicas)
    if not admin:
        for namespace in provider.namespaces():  # a private function in any of them (Kubernetes)
            try:
                statuses = default if namespace == provider.default_namespace else provider.statuses(namespace)
            except StreamfaasError:
                hidden_namespaces.add(b'.%s"' % namespace.encode())  # unread: none of its series shown
                continue
            own = "" if namespace == provider.default_namespace else namespace
            for status in statuses:
                if is_private(status.labels, status.annotations):
                    hidden.add(b'function_name="%s"' % qualified_name(status.name, own).encode())
    body = metrics.render()
    if hidden or hidden_namespaces:
        # A private function's series are the admin's to see: without them an anonymous caller
        # learns neither its name nor how much, and how successfully, others call it.
        def shown(line: bytes) -> bool:
            if any(h in line for h in hidden):
                return False
            return not (b'function_name="' in line and any(n in line for n in hidden_namespaces))

        body = b"\n".join(line for line in body.split(b"\n") if shown(line))
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp
