"""The gateway's Prometheus metrics, keeping OpenFaaS's names where a metric means the same."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..autoscale.metrics import AutoscaleMetrics
from ..queue.metrics import QueueMetrics
from .metrics_streams import Children, StreamMetrics


class GatewayMetrics:
    """One registry per gateway app, so several apps in one process (tests) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.invocations = Counter(
            "gateway_function_invocation",
            "Function invocations by status code.",
            ["function_name", "code"],
            registry=self.registry,
        )
        # A gauge only so the exposed name stays OpenFaaS's exactly (a Counter would add
        # "_total"); it only ever goes up.
        self.started = Gauge(
            "gateway_function_invocation_started",
            "Function invocations started.",
            ["function_name"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "gateway_functions_seconds",
            "Time until a function's response ended (streams included).",
            ["function_name", "code"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600),
        )
        # The children used on every request, looked up once (see Children).
        self.started_of = Children(self.started)
        self.invocations_of = Children(self.invocations)
        self.seconds_of = Children(self.seconds)
        self.service_count = Gauge(
            "gateway_service_count", "Replicas per function.", ["function_name"], registry=self.registry
        )
        self.queue = QueueMetrics(self.registry)  # async invocations
        self.streams = StreamMetrics(self.registry)
        self.autoscale = AutoscaleMetrics(self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
