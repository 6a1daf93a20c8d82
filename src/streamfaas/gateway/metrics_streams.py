"""Per-function stream metrics: time to first byte, open streams, duration, bytes, events and
who ended a stream early. Updated a few times a stream (``StreamObserver``), never per chunk."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, 1800, 3600)
DISCONNECT_SIDES = ("client", "function", "timeout")


class StreamMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.ttfb = Histogram(
            "gateway_function_ttfb_seconds",
            "Time from a request reaching the gateway to the first byte of the function's body.",
            ["function_name"],
            registry=registry,
            buckets=_SECONDS[:12],
        )
        self.open = Gauge(
            "gateway_streams_open", "Responses being streamed to clients now.", ["function_name"], registry=registry
        )
        self.duration = Histogram(
            "gateway_stream_duration_seconds",
            "Time from a response's headers going out to its stream ending, however it ended.",
            ["function_name"],
            registry=registry,
            buckets=_SECONDS,
        )
        self.bytes = Counter(
            "gateway_stream_bytes",
            "Body bytes passed from functions to clients (counted when a stream ends).",
            ["function_name"],
            registry=registry,
        )
        self.events = Counter(
            "gateway_stream_events",
            "Server-sent events passed from functions to clients (counted when a stream ends).",
            ["function_name"],
            registry=registry,
        )
        self.disconnects = Counter(
            "gateway_stream_disconnects",
            "Streams ended before the function finished, by the side that ended them.",
            ["function_name", "side"],
            registry=registry,
        )

        self.resumes = Counter(
            "gateway_stream_resumes",
            "Requests that asked to resume a stream (Last-Event-ID), by what they got: resumed, "
            "rerun (a fresh call), or why not (unknown, dropped).",
            ["function_name", "result"],
            registry=registry,
        )

    def observer(self, function_name: str, began: float) -> StreamTally:
        """One stream's observer; ``began`` is the request's ``time.perf_counter()``."""
        return StreamTally(self, function_name, began)


class StreamTally:
    """A ``proxy.StreamObserver`` for one stream of one function."""

    __slots__ = ("_metrics", "_name", "_began", "_opened")

    def __init__(self, metrics: StreamMetrics, function_name: str, began: float) -> None:
        self._metrics = metrics
        self._name = function_name
        self._began = began
        self._opened = 0.0

    def opened(self) -> None:
        self._opened = time.perf_counter()
        self._metrics.open.labels(function_name=self._name).inc()

    def first_byte(self) -> None:
        self._metrics.ttfb.labels(function_name=self._name).observe(time.perf_counter() - self._began)

    def ended(self, nbytes: int, events: int, outcome: str) -> None:
        m = self._metrics
        name = self._name
        if self._opened:
            m.open.labels(function_name=name).dec()
            m.duration.labels(function_name=name).observe(time.perf_counter() - self._opened)
        if nbytes:
            m.bytes.labels(function_name=name).inc(nbytes)
        if events:
            m.events.labels(function_name=name).inc(events)
        if outcome in DISCONNECT_SIDES:
            m.disconnects.labels(function_name=name, side=outcome).inc()
