"""The last few minutes of each function's stream metrics, for the UI's live charts.

A sampler reads the gateway's own ``StreamMetrics`` every ``interval`` seconds and keeps, per
deployed function, a ring of the last ``window`` seconds: streams open at the sample, the TTFB
p50 and p99 of the streams whose first byte came within the interval, and the disconnects in the
interval by side. It reads the metric objects (``collect()``), never the stream path, so a
stream costs nothing more. ``GET /system/stream-history`` serves the rings as JSON.

Memory is bounded: one ring of ``window / interval`` points per deployed function, and one
set of cumulative counts per function the registry knows (which the registry holds anyway).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..errors import StreamfaasError
from ..provider.base import Provider
from .invoke import qualified_name
from .metrics_streams import DISCONNECT_SIDES, StreamMetrics

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 5.0
DEFAULT_WINDOW = 300.0
QUANTILES = (0.5, 0.99)


def bucket_quantile(q: float, bounds: list[float], counts: list[float]) -> float | None:
    """The ``q``-quantile of observations counted in histogram buckets, as Prometheus's
    ``histogram_quantile`` estimates it; None when there are none.

    ``bounds`` are the buckets' upper bounds, ascending, ending with +Inf; ``counts`` the
    cumulative counts (observations <= each bound). The rank ``q * total`` falls into the first
    bucket whose cumulative count reaches it; within that bucket the observations are taken to
    be spread evenly, so the estimate is linear interpolation between the bucket's lower bound
    (the previous upper bound, or 0 for the first bucket) and its upper bound. A rank in the
    +Inf bucket has no upper bound to interpolate to: the largest finite bound is returned, as
    Prometheus does. So the estimate is only as fine as the buckets around it.
    """
    if not counts or counts[-1] <= 0:
        return None
    total = counts[-1]
    rank = q * total
    i = bisect.bisect_left(counts, rank)
    i = min(i, len(counts) - 1)
    if math.isinf(bounds[i]):
        return bounds[-2] if len(bounds) > 1 else None
    lower = bounds[i - 1] if i > 0 else 0.0
    below = counts[i - 1] if i > 0 else 0.0
    inside = counts[i] - below
    if inside <= 0:
        return bounds[i]
    return lower + (bounds[i] - lower) * (rank - below) / inside


@dataclass
class _Totals:
    """A function's cumulative counts at the last sample, to take each interval's deltas."""

    ttfb: list[float] = field(default_factory=list)  # per bucket, cumulative
    disconnects: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Point:
    at: float  # Unix seconds
    open: int
    first_bytes: int  # streams whose first byte came in the interval
    ttfb: tuple[float | None, ...]  # one per QUANTILES
    disconnects: tuple[int, ...]  # one per DISCONNECT_SIDES


@dataclass
class _Reading:
    """One ``collect()`` of the stream metrics, per function name."""

    bounds: list[float] = field(default_factory=list)
    open: dict[str, float] = field(default_factory=dict)
    ttfb: dict[str, dict[float, float]] = field(default_factory=dict)
    disconnects: dict[str, dict[str, float]] = field(default_factory=dict)


def _read(metrics: StreamMetrics) -> _Reading:
    r = _Reading()
    for family in metrics.open.collect():
        for s in family.samples:
            r.open[s.labels["function_name"]] = s.value
    bounds: set[float] = set()
    for family in metrics.ttfb.collect():
        for s in family.samples:
            if s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                bounds.add(le)
                r.ttfb.setdefault(s.labels["function_name"], {})[le] = s.value
    r.bounds = sorted(bounds)
    for family in metrics.disconnects.collect():
        for s in family.samples:
            if s.name.endswith("_total"):
                r.disconnects.setdefault(s.labels["function_name"], {})[s.labels["side"]] = s.value
    return r


class StreamHistory:
    """Samples ``metrics`` every ``interval`` s into a ``window`` s ring per function in
    ``names()`` (the deployed functions, as metrics name them); a function no longer deployed
    loses its ring at the next sample."""

    def __init__(
        self,
        metrics: StreamMetrics,
        names: Callable[[], Iterable[str]],
        *,
        interval: float = DEFAULT_INTERVAL,
        window: float = DEFAULT_WINDOW,
    ) -> None:
        if not interval > 0 or not window >= interval:
            raise ValueError(
                f"stream history: interval {interval!r} must be > 0 and <= window {window!r}"
            )
        self.metrics = metrics
        self.names = names
        self.interval = interval
        self.window = window
        self._size = max(1, math.ceil(window / interval))
        self._rings: dict[str, deque[_Point]] = {}
        self._totals: dict[str, _Totals] = {}

    def sample(self) -> None:
        """Take one sample now (the task calls this every ``interval``)."""
        now = time.time()
        reading = _read(self.metrics)
        deployed = set(self.names())
        for name in deployed - self._rings.keys():
            self._rings[name] = deque(maxlen=self._size)
        for name in self._rings.keys() - deployed:
            del self._rings[name]
        # Totals for every function the registry knows, deployed or not: a function removed
        # and deployed again must not count its old streams as new.
        known = (
            reading.ttfb.keys()
            | reading.disconnects.keys()
            | reading.open.keys()
            | self._rings.keys()
        )
        for name in self._totals.keys() - known:
            del self._totals[name]
        for name in known:
            point = self._advance(name, reading, now)
            ring = self._rings.get(name)
            if ring is not None:
                ring.append(point)

    def _advance(self, name: str, reading: _Reading, now: float) -> _Point:
        totals = self._totals.setdefault(name, _Totals())
        # A label set that appeared since the last sample started from 0 then.
        buckets = reading.ttfb.get(name, {})
        cumulative = [buckets.get(b, 0.0) for b in reading.bounds]
        before = totals.ttfb if len(totals.ttfb) == len(cumulative) else [0.0] * len(cumulative)
        delta = [max(c - b, 0.0) for c, b in zip(cumulative, before, strict=True)]
        totals.ttfb = cumulative
        sides = reading.disconnects.get(name, {})
        gone = []
        for side in DISCONNECT_SIDES:
            value = sides.get(side, 0.0)
            gone.append(int(max(value - totals.disconnects.get(side, 0.0), 0.0)))
            totals.disconnects[side] = value
        return _Point(
            at=now,
            open=int(reading.open.get(name, 0.0)),
            first_bytes=int(delta[-1]) if delta else 0,
            ttfb=tuple(bucket_quantile(q, reading.bounds, delta) for q in QUANTILES),
            disconnects=tuple(gone),
        )

    def to_json(self, *, include_quiet: bool = False) -> dict[str, Any]:
        """Columns per function, oldest first. Functions with no open stream, no first byte
        and no disconnect in the whole window are left out unless ``include_quiet``."""
        functions: dict[str, Any] = {}
        for name in sorted(self._rings):
            ring = list(self._rings[name])
            if not include_quiet and not any(
                p.open or p.first_bytes or any(p.disconnects) for p in ring
            ):
                continue
            functions[name] = {
                "t": [round(p.at, 3) for p in ring],
                "open": [p.open for p in ring],
                "first_bytes": [p.first_bytes for p in ring],
                "ttfb_p50_s": [p.ttfb[0] for p in ring],
                "ttfb_p99_s": [p.ttfb[1] for p in ring],
                "disconnects": {
                    side: [p.disconnects[i] for p in ring]
                    for i, side in enumerate(DISCONNECT_SIDES)
                },
            }
        return {
            "interval_s": self.interval,
            "window_s": self.window,
            "now": round(time.time(), 3),
            "functions": functions,
        }

    async def run(self, app: web.Application) -> AsyncIterator[None]:
        """An aiohttp ``cleanup_ctx``: sample from start-up until shutdown."""
        task = asyncio.create_task(self._loop(), name="stream-history")
        try:
            yield
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        failing = ""  # the last failure logged: one that repeats every sample is logged once
        while True:
            try:
                self.sample()
                failing = ""
            except Exception as exc:  # a chart is not worth the gateway: log, and keep sampling
                if repr(exc) != failing:
                    failing = repr(exc)
                    log.exception("stream history: sampling failed")
            # An absolute schedule: a late wake-up does not push every later sample back.
            due = max(due + self.interval, loop.time())
            await asyncio.sleep(due - loop.time())


def deployed_names(provider: Provider) -> list[str]:
    """Every deployed function as the metrics name it: NAME, or NAME.NAMESPACE outside the
    default namespace (``invoke.qualified_name``)."""
    names: list[str] = []
    for namespace in provider.namespaces():
        try:
            statuses = provider.statuses(namespace)
        except StreamfaasError:  # a namespace that cannot be read now: skip it this time
            continue
        shown = "" if namespace == provider.default_namespace else namespace
        names.extend(qualified_name(s.name, shown) for s in statuses)
    return names


STREAM_HISTORY_KEY = web.AppKey("stream_history", StreamHistory)


async def stream_history_endpoint(request: web.Request) -> web.Response:
    """``GET /system/stream-history[?all=1]``: the rings as JSON (admin only, like all /system)."""
    history = request.app[STREAM_HISTORY_KEY]
    include_quiet = request.query.get("all", "") in ("1", "true")
    return web.json_response(history.to_json(include_quiet=include_quiet))
