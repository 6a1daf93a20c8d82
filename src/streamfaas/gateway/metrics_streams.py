"""Per-function stream metrics: time to first byte, open streams, duration, bytes, events and
who ended a stream early. Updated a few times a stream (``StreamObserver``), never per chunk."""

from __future__ import annotations

import time
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

M = TypeVar("M", Counter, Gauge, Histogram)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, 1800, 3600)
DISCONNECT_SIDES = ("client", "function", "timeout")


class Children(Generic[M]):
    """A labelled metric's children by label values, each looked up once: prometheus_client's
    ``labels()`` checks its arguments and takes a lock on every call, a cost on every request's
    path. Children are never removed (nor are they in prometheus_client), so neither are these."""

    __slots__ = ("_metric", "_children")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        try:
            return self._children[values]
        except KeyError:
            child = self._children[values] = self._metric.labels(*values)
            return child


class _OneFunction:
    """The children of one function's stream metrics, looked up once per function."""

    __slots__ = ("open", "ttfb", "duration", "bytes", "events", "_name", "_disconnects")

    def __init__(self, m: StreamMetrics, name: str) -> None:
        self.open = m.open.labels(name)
        self.ttfb = m.ttfb.labels(name)
        self.duration = m.duration.labels(name)
        self.bytes = m.bytes.labels(name)
        self.events = m.events.labels(name)
        self._name = name
        self._disconnects = Children(m.disconnects)

    def disconnected(self, side: str) -> None:
        """Count a stream ended early by ``side`` (a series appears with its first count)."""
        self._disconnects(self._name, side).inc()


class StreamMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._functions: dict[str, _OneFunction] = {}
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
        one = self._functions.get(function_name)
        if one is None:
            one = self._functions[function_name] = _OneFunction(self, function_name)
        return StreamTally(one, began)


class StreamTally:
    """A ``proxy.StreamObserver`` for one stream of one function."""

    __slots__ = ("_m", "_began", "_opened")

    def __init__(self, one: _OneFunction, began: float) -> None:
        self._m = one
        self._began = began
        self._opened = 0.0

    def opened(self) -> None:
        self._opened = time.perf_counter()
        self._m.open.inc()

    def first_byte(self) -> None:
        self._m.ttfb.observe(time.perf_counter() - self._began)

    def ended(self, nbytes: int, events: int, outcome: str) -> None:
        m = self._m
        if self._opened:
            m.open.dec()
            m.duration.observe(time.perf_counter() - self._opened)
        if nbytes:
            m.bytes.inc(nbytes)
        if events:
            m.events.inc(events)
        if outcome in DISCONNECT_SIDES:
            m.disconnected(outcome)
