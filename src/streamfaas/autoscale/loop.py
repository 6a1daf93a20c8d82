"""The autoscaler: one loop that looks at every function's load each ``interval`` and scales
it, acting only through the ``Provider`` protocol.

Interfaces (what a provider or a cluster plugs in):

- ``Provider``: ``namespaces()``, ``statuses(ns)`` (labels and ``replicas`` wanted), and
  ``scale(name, n, ns)``. How a provider scales down is its own: the local one takes the
  picked replicas out of rotation and stops them once their streams end.
- ``LoadSource.load(name, namespace) -> FunctionLoad``: the function's load. The default,
  ``ProviderLoad``, is this gateway's own count (``Provider.load``); with several gateways
  (Kubernetes) a source that sums every gateway's share plugs in here.
- ``is_leader() -> bool``: asked before each round. Only the leader scales; one that is not
  forgets what it watched, so when it becomes the leader it starts with fresh windows (and so
  scales nothing down before it has watched a whole stable window).
- ``cpu``: ``FunctionLoad.cpu_seconds`` (a counter); a provider that cannot tell leaves it
  None, and a ``type: cpu`` function is then sized on 0 (it stays at its minimum).

A function at 0 replicas is left there (a request wakes it, in ``Provider.acquire``), and one
whose ``min`` equals its ``max`` is never scaled (hand scaling still works).

Between rounds, a request that has to wait for a replica nudges the autoscaler (the provider's
``on_wait``): ``NUDGE_DELAY`` later it looks at that one ``capacity`` function again, for the
panic window only, and scales it up if the peak says so; never down. So a burst is met within a
tenth of a second, not up to a whole ``interval`` later, and the stable window keeps its
cadence (a burst does not add samples to the mean that sizes the function and scales it down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import AutoscaleConfig
from ..errors import BadRequest, StreamfaasError
from ..provider.base import FunctionLoad, Provider
from ..provider.models import ScaleLabels
from .metrics import AutoscaleMetrics
from .policy import NONE, UP, Decision, FunctionPolicy, Windows

log = logging.getLogger("streamfaas.autoscale")

# A burst's requests begin to wait within a few milliseconds of each other: the look they cue
# comes this long after the first, so it sees the burst rather than its first waiting request.
NUDGE_DELAY = 0.05
# At most one nudged look per function in this long, however many requests wait meanwhile.
NUDGE_SPACING = 0.25


class LoadSource(Protocol):
    async def load(self, name: str, namespace: str, *, cpu: bool) -> FunctionLoad:
        """The function's load now (``cpu``: with ``cpu_seconds`` too); ``FunctionNotFound``
        if it went away."""


class ProviderLoad:
    """This gateway's own count: the whole load where one gateway serves every request."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    async def load(self, name: str, namespace: str, *, cpu: bool) -> FunctionLoad:
        return self.provider.load(name, namespace, cpu=cpu)


@dataclass
class Watched:
    """One function as the autoscaler last saw it (what ``describe`` shows)."""

    policy: FunctionPolicy
    scaling: ScaleLabels
    load: FunctionLoad
    sample: float  # the last sample, in ``scaling.type``'s unit
    decision: Decision | None = None
    cpu: tuple[float, float] | None = None  # the last (time, cpu_seconds)

    def view(self, now: float, enabled: bool) -> dict[str, Any]:
        s, d = self.scaling, self.decision
        return {
            "autoscaling": enabled and not s.fixed,
            "type": s.type, "target": s.target, "targetProportion": s.proportion,
            "min": s.min, "max": s.max, "zero": s.zero, "zeroDuration": s.zero_duration,
            "load": round(self.sample, 3), "stableLoad": round(self.policy.stable.mean(now), 3),
            "inflight": self.load.inflight, "waiting": self.load.waiting,
            "replicas": self.load.replicas, "availableReplicas": self.load.ready, "draining": self.load.draining,
            "desiredReplicas": d.desired if d is not None else self.load.replicas,
            "panic": bool(d and d.panic),
        }


def qualified(name: str, namespace: str) -> str:
    return f"{name}.{namespace}" if namespace else name


class Autoscaler:
    def __init__(
        self,
        provider: Provider,
        load_source: LoadSource | None = None,
        *,
        config: AutoscaleConfig | None = None,
        metrics: AutoscaleMetrics | None = None,
        is_leader: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.source = load_source or ProviderLoad(provider)
        self.config = config or AutoscaleConfig()
        self.metrics = metrics
        self.is_leader = is_leader
        self.clock = clock
        self.windows = Windows(stable=self.config.stable_window, panic=self.config.panic_window)
        self.defaults = ScaleLabels(type=self.config.default_type, target=self.config.default_target,
                                    zero_duration=self.config.default_zero_duration)
        self.watched: dict[tuple[str, str], Watched] = {}  # by (namespace or "", name)
        self._task: asyncio.Task[None] | None = None
        self._nudges: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._deciding = asyncio.Lock()  # a round's look and a nudged one never interleave

    async def start(self) -> None:
        if self.config.enabled:
            self._task = asyncio.create_task(self._run(), name="autoscaler")
            self.provider.on_wait = self.nudge

    async def close(self) -> None:
        if self.provider.on_wait == self.nudge:
            self.provider.on_wait = None
        tasks = [t for t in (self._task, *self._nudges.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        self._nudges.clear()

    def _key(self, name: str, namespace: str) -> tuple[str, str]:
        return ("" if namespace in ("", self.provider.default_namespace) else namespace, name)

    def nudge(self, name: str, namespace: str = "") -> None:
        """A request began to wait for a replica of this function: look at it soon (see the
        module's docstring). Cheap to call on every waiting request: one look is pending at most."""
        key = self._key(name, namespace)
        if self._task is not None and key not in self._nudges:
            self._nudges[key] = asyncio.create_task(self._nudged(key), name=f"autoscaler nudge {qualified(name, key[0])}")

    async def _nudged(self, key: tuple[str, str]) -> None:
        try:
            await asyncio.sleep(NUDGE_DELAY)
            if self.is_leader():
                async with self._deciding:
                    await self._peek(key)
            await asyncio.sleep(NUDGE_SPACING - NUDGE_DELAY)
        except StreamfaasError as exc:  # removed or changed meanwhile; the next round sees it
            log.warning("autoscaler: %s: %s", qualified(key[1], key[0]), exc)
        except Exception:
            log.exception("autoscaler: nudged look failed")
        finally:
            self._nudges.pop(key, None)

    async def _peek(self, key: tuple[str, str]) -> None:
        """A nudged look: the panic window only, and up only."""
        ns, name = key
        status = self.provider.status(name, ns)
        watched = self.watched.get(key)
        if watched is None:  # deployed since the last round: a whole look starts watching it
            await self._look(key, status.labels, status.replicas)
            return
        current = status.replicas
        if watched.scaling.fixed or watched.scaling.type != "capacity" or current == 0:
            return  # not sized on waiting requests; or at 0, which a request wakes (in acquire)
        load = await self.source.load(name, ns, cpu=False)
        now = self.clock()
        watched.load = load
        watched.policy.peek(now, load)
        decision = watched.policy.decide(now, watched.scaling, current)
        if decision.direction == UP:
            watched.decision = decision
            await self._scale(key, watched.scaling, current, decision)

    async def _run(self) -> None:
        while True:
            began = self.clock()
            try:
                async with self._deciding:
                    await self.tick()
            except Exception:  # one bad round must not end autoscaling for good
                log.exception("autoscaler: round failed")
            await asyncio.sleep(max(self.config.interval - (self.clock() - began), 0.0))

    def scaling_of(self, labels: dict[str, str]) -> ScaleLabels:
        return ScaleLabels.from_labels(labels, base=self.defaults)

    def view(self, name: str, namespace: str = "") -> dict[str, Any] | None:
        """What the autoscaler saw of the function at its last round; None if it has not yet."""
        watched = self.watched.get(self._key(name, namespace))
        return watched.view(self.clock(), self.config.enabled) if watched is not None else None

    async def tick(self) -> None:
        """One round: sample every function's load, decide, and scale where the decision says."""
        if not self.is_leader():
            self._forget_all()
            return
        seen: set[tuple[str, str]] = set()
        for namespace in self.provider.namespaces():
            ns = "" if namespace == self.provider.default_namespace else namespace
            try:
                statuses = self.provider.statuses(ns)
            except StreamfaasError:
                continue  # a namespace that cannot be read now: its functions keep their replicas
            for status in statuses:
                key = (ns, status.name)
                seen.add(key)
                try:
                    await self._look(key, status.labels, status.replicas)
                except StreamfaasError as exc:  # removed or changed meanwhile; the next round sees it
                    log.warning("autoscaler: %s: %s", qualified(status.name, ns), exc)
        for key in [k for k in self.watched if k not in seen]:
            self._forget(key)

    async def _look(self, key: tuple[str, str], labels: dict[str, str], current: int) -> None:
        ns, name = key
        try:
            scaling = self.scaling_of(labels)
        except BadRequest:
            return  # refused at deploy; only an object edited by hand gets here
        load = await self.source.load(name, ns, cpu=scaling.type == "cpu")
        now = self.clock()
        watched = self.watched.get(key)
        if watched is None or watched.scaling.type != scaling.type:
            if watched is not None:
                self._forget(key)
            watched = self.watched[key] = Watched(FunctionPolicy(self.windows, now), scaling, load, 0.0)
        watched.scaling, watched.load = scaling, load
        watched.sample = watched.policy.observe(now, load, scaling.type, self._millicores(watched, now, load))
        if scaling.fixed or current == 0:
            watched.decision = None
            self._show(key, scaling, current)
            return
        decision = watched.policy.decide(now, scaling, current)
        watched.decision = decision
        if decision.direction == NONE:
            self._show(key, scaling, decision.desired)
            return
        await self._scale(key, scaling, current, decision)

    async def _scale(self, key: tuple[str, str], scaling: ScaleLabels, current: int, decision: Decision) -> None:
        ns, name = key
        self._show(key, scaling, decision.desired)
        got = await self.provider.scale(name, decision.desired, ns)
        log.info("autoscaler: %s %d -> %d (%s, load %.2f)", qualified(name, ns), current, got, decision.reason, decision.load)
        if self.metrics is not None:
            self.metrics.decisions.labels(direction=decision.direction, reason=decision.reason).inc()

    @staticmethod
    def _millicores(watched: Watched, now: float, load: FunctionLoad) -> float | None:
        if load.cpu_seconds is None:
            return None
        last, watched.cpu = watched.cpu, (now, load.cpu_seconds)
        if last is None or now <= last[0]:
            return 0.0
        return max(load.cpu_seconds - last[1], 0.0) / (now - last[0]) * 1000

    def _show(self, key: tuple[str, str], scaling: ScaleLabels, desired: int) -> None:
        if self.metrics is not None:
            self.metrics.show(qualified(key[1], key[0]), scaling.type, scaling.target, desired)

    def _forget(self, key: tuple[str, str]) -> None:
        watched = self.watched.pop(key, None)
        if watched is not None and self.metrics is not None:
            self.metrics.forget(qualified(key[1], key[0]), watched.scaling.type)

    def _forget_all(self) -> None:
        for key in list(self.watched):
            self._forget(key)
