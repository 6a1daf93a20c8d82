"""Prometheus metrics of async invocations: in the gateway's registry, or a standalone worker's."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class QueueMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.depth = Gauge(
            "streamfaas_queue_depth",
            "Async jobs in the queue: pending (waiting, backing off or running) and failed (dead-lettered).",
            ["state"],
            registry=registry,
        )
        self.submitted = Counter(
            "streamfaas_queue_submitted", "Async invocations accepted (202).", ["function_name"], registry=registry
        )
        self.completed = Counter(
            "streamfaas_queue_completed",
            "Async jobs done (callback delivered, or no callback), by the function's status code.",
            ["function_name", "code"],
            registry=registry,
        )
        self.retries = Counter(
            "streamfaas_queue_retries",
            "Failed attempts that will be retried, by what failed: function, connection or callback.",
            ["function_name", "reason"],
            registry=registry,
        )
        self.failures = Counter(
            "streamfaas_queue_failures",
            "Async jobs moved to the dead-letter list after their last retry.",
            ["function_name"],
            registry=registry,
        )
        self.wait_seconds = Histogram(
            "streamfaas_queue_wait_seconds",
            "Time in the queue: from submit until a worker first starts the job.",
            ["function_name"],
            registry=registry,
            buckets=_WAIT_BUCKETS,
        )
        self.done_seconds = Histogram(
            "streamfaas_queue_done_seconds",
            "From submit until the job was done (callback delivered), retries included.",
            ["function_name"],
            registry=registry,
            buckets=_WAIT_BUCKETS,
        )
