"""``/metrics``: Prometheus text format."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import StreamfaasError
from .auth import is_private
from .invoke import qualified_name
from .state import state_of

_LABEL = b'function_name="'


def _function_of(line: bytes) -> bytes | None:
    """The ``function_name`` label's value on an exposition line, or None where it has none."""
    at = line.find(_LABEL)
    if at < 0:
        return None
    start = at + len(_LABEL)
    return line[start:line.find(b'"', start)]


async def metrics_endpoint(request: web.Request) -> web.Response:
    state = state_of(request)
    metrics = state.metrics
    admin = state.credentials is None or state.credentials.matches(request.headers.get("Authorization"))
    provider = state.provider
    default = provider.statuses()
    for status in default:
        metrics.service_count.labels(function_name=status.name).set(status.availableReplicas)
    body = metrics.render()
    if not admin:
        # Only the series of functions deployed now and public: a private function's are the
        # admin's to see (without them an anonymous caller learns neither its name nor how
        # much, and how successfully, others call it), and so are those of one removed, whose
        # series stay (before, a private function's showed again once it was removed).
        public: set[bytes] = set()
        for namespace in provider.namespaces():  # a private function in any of them (Kubernetes)
            try:
                statuses = default if namespace == provider.default_namespace else provider.statuses(namespace)
            except StreamfaasError:
                continue  # unread: none of its series shown
            own = "" if namespace == provider.default_namespace else namespace
            for status in statuses:
                if not is_private(status.labels, status.annotations):
                    public.add(qualified_name(status.name, own).encode())
        body = b"\n".join(line for line in body.split(b"\n") if (name := _function_of(line)) is None or name in public)
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp
