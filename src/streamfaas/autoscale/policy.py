"""How many replicas a function should have: pure arithmetic over load samples and a clock.

Nothing here does I/O or reads the time: the loop (``loop.py``) feeds each function's
``FunctionPolicy`` one sample per tick and asks it for a ``Decision``, so every rule below is
unit-tested with made-up times.

The rules (issue #13, after Knative's concurrency autoscaler):

- A replica is sized for ``target × target-proportion`` units of load (``ScaleLabels.per_replica``);
  ``desired = ceil(load / per_replica)``, clamped to ``max(min, 1) .. max``.
- *Stable mode*: ``load`` is the mean of the samples of the stable window (60 s by default).
  A policy scales down only once it has watched a whole stable window, so a gateway that has
  just started (or just became the leader) never scales down on an empty window.
- *Panic mode*: when the peak of the panic window (6 s by default) is over
  ``PANIC_THRESHOLD`` × the capacity of the replicas there are now, the function scales up at
  once to that peak; panic lasts a stable window past the last time it held, and while it
  lasts the function never scales down.
- *Idle*: with ``com.openfaas.scale.zero=true``, a function that had no request open,
  waiting or started for ``zero-duration`` goes to 0. (A function at 0 is left there: the next
  request wakes it, in the provider's ``acquire``.)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ..provider.base import FunctionLoad
from ..provider.models import ScaleLabels

PANIC_THRESHOLD = 2.0
UP, DOWN, NONE = "up", "down", "none"


@dataclass(frozen=True)
class Windows:
    stable: float = 60.0
    panic: float = 6.0

    def __post_init__(self) -> None:
        if not 0 < self.panic <= self.stable:
            raise ValueError(f"windows: need 0 < panic ({self.panic:g}s) <= stable ({self.stable:g}s)")


@dataclass(frozen=True)
class Decision:
    desired: int
    direction: str  # UP, DOWN or NONE
    reason: str  # "panic", "stable" or "idle"
    load: float  # the stable window's mean (what ``describe`` shows)
    panic: bool


class Window:
    """Samples ``(time, value)`` of the last ``span`` seconds."""

    def __init__(self, span: float) -> None:
        self.span = span
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, value: float) -> None:
        self._samples.append((now, value))
        while self._samples and self._samples[0][0] <= now - self.span:
            self._samples.popleft()

    def _recent(self, now: float) -> list[float]:
        return [v for t, v in self._samples if t > now - self.span]

    def mean(self, now: float) -> float:
        values = self._recent(now)
        return sum(values) / len(values) if values else 0.0

    def peak(self, now: float) -> float:
        return max(self._recent(now), default=0.0)


def replicas_for(load: float, per_replica: float) -> int:
    """``ceil(load / per_replica)``, forgiving float noise (14.4 / 14.4 * 1.0000000001 is 1)."""
    return max(math.ceil(load / per_replica - 1e-9), 0)


class FunctionPolicy:
    """One function's windows and modes, as one autoscaler has watched it since ``born``."""

    def __init__(self, windows: Windows, born: float) -> None:
        self.windows = windows
        self.born = born
        self.stable = Window(windows.stable)
        self.panic = Window(windows.panic)
        self.panic_until: float | None = None
        self.last_active = born
        self._requests: tuple[float, int] | None = None  # the last (time, requests counter)

    def observe(self, now: float, load: FunctionLoad, kind: str, cpu_millicores: float | None = None) -> float:
        """Record one sample of ``load`` in the unit of ``kind``; returns the sample."""
        rate = self._rate(now, load.requests)
        if load.inflight or load.waiting or rate > 0:
            self.last_active = now
        if kind == "rps":
            value = rate
        elif kind == "cpu":
            value = cpu_millicores or 0.0
        else:
            value = float(load.concurrency)
        self.stable.add(now, value)
        self.panic.add(now, value)
        return value

    def peek(self, now: float, load: FunctionLoad) -> None:
        """A ``capacity`` sample between two rounds, for the panic window only: its peak does
        not depend on how often it is sampled, the stable window's mean would."""
        if load.inflight or load.waiting:
            self.last_active = now
        self.panic.add(now, float(load.concurrency))

    def _rate(self, now: float, requests: int) -> float:
        last, self._requests = self._requests, (now, requests)
        if last is None or now <= last[0]:
            return 0.0
        return max(requests - last[1], 0) / (now - last[0])  # a counter that went back restarted

    def decide(self, now: float, scaling: ScaleLabels, current: int) -> Decision:
        """What ``current`` replicas (more than 0) should become now."""
        per = scaling.per_replica
        floor, ceiling = min(max(scaling.min, 1), scaling.max), scaling.max
        load = self.stable.mean(now)
        peak = self.panic.peak(now)
        stable = min(max(replicas_for(load, per), floor), ceiling)
        if peak > PANIC_THRESHOLD * max(current, 1) * per:
            self.panic_until = now + self.windows.stable
        panicking = self.panic_until is not None and now < self.panic_until
        if panicking:
            desired = max(current, stable, min(replicas_for(peak, per), ceiling))
            reason = "panic"
        else:
            self.panic_until = None
            desired = stable
            reason = "stable"
            if desired < current and now - self.born < self.windows.stable:
                desired = current  # not watched a whole window yet: no basis to scale down
        if scaling.zero and not panicking and now - self.last_active >= scaling.zero_duration:
            desired, reason = 0, "idle"
        desired = min(desired, ceiling)
        direction = UP if desired > current else DOWN if desired < current else NONE
        return Decision(desired=desired, direction=direction, reason=reason, load=load, panic=panicking)
