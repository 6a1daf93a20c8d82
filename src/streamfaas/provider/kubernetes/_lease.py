"""One autoscaler per cluster (issue #13): gateways elect a leader on a Lease, and each
publishes its own share of every function's load for the leader to sum.

- **Election**: the ``coordination.k8s.io/v1`` Lease ``streamfaas-autoscaler`` in the functions
  namespace, as client-go's leader election does it. Each gateway tries every ``RENEW_EVERY``
  (2 s): it creates the Lease, renews it when it holds it, or takes it over once it has seen it
  unchanged for its ``leaseDurationSeconds`` (10 s, measured on this gateway's own clock, so
  clock skew between nodes does not matter). Writes carry the ``resourceVersion`` read, so two
  gateways never both win. A leader stops deciding once it has failed to renew for
  ``RENEW_DEADLINE`` (7 s), before any other may take over; one that stops releases the Lease,
  and another takes over at its next try.
- **Load**: each gateway keeps a Lease of its own, ``streamfaas-gateway-<identity>``, whose
  ``streamfaas/load`` annotation holds ``{"NAMESPACE/NAME": [inflight, waiting, requests]}``,
  written every autoscale interval. The leader lists them each interval and sums its own
  count (read directly) with the fresh ones: those it has seen change within
  ``max(3 intervals, 3 s)``. A gateway that died is left out after that, and its Lease deleted
  after ``FORGET_AFTER``.

API cost: per gateway one PATCH per interval and one GET (plus a PUT when it holds the Lease)
per 2 s; the leader adds one LIST per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Annotated, Any

from kubernetes_asyncio import client as k8s
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import Field, TypeAdapter, ValidationError

from ...errors import Conflict, FunctionNotFound, StreamfaasError
from ..base import FunctionLoad, Provider
from ._api import KubeClient, api_errors
from ._objects import MANAGED_BY, MANAGED_BY_LABEL
from .provider import KubernetesProvider

LEADER_LEASE = "streamfaas-autoscaler"
LOAD_LEASE_PREFIX = "streamfaas-gateway-"
LOAD_LABEL = "streamfaas/gateway-load"
LOAD_ANNOTATION = "streamfaas/load"
LEASE_SECONDS = 10
RENEW_EVERY = 2.0
RENEW_DEADLINE = 7.0  # < LEASE_SECONDS: a leader that cannot renew stops before another may start
FORGET_AFTER = 60.0  # a gateway's load Lease unchanged this long is deleted (by the leader)
CALL_TIMEOUT = 5.0  # one API call of these loops: a slow one must not outlast the lease
log = logging.getLogger("streamfaas.autoscale")

Counts = tuple[int, int, int]  # inflight, waiting, requests
NonNegative = Annotated[int, Field(ge=0)]
_LOADS = TypeAdapter(dict[str, tuple[NonNegative, NonNegative, NonNegative]])
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def gateway_identity(hostname: str | None = None) -> str:
    """This gateway's name in the Leases: its host (the pod's name in a cluster) and a random
    suffix, so two gateways on one host, or a restarted one, never share it."""
    host = _NOT_DNS.sub("-", (hostname or socket.gethostname()).lower()).strip("-")[:40] or "gateway"
    return f"{host}-{secrets.token_hex(3)}"


def micro_time(when: float) -> str:
    """A Unix time as the API's MicroTime."""
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(raw: object) -> float | None:
    try:
        return dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class _Once:
    """Logs an API failure of a loop once, not at every round, and its recovery."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.last = ""

    def failed(self, exc: StreamfaasError) -> None:
        if str(exc) != self.last:
            self.last = str(exc)
            log.warning("%s: %s", self.what, exc)

    def ok(self) -> None:
        if self.last:
            log.warning("%s: working again", self.what)
            self.last = ""


class LeaderElection:
    def __init__(self, client: KubeClient, namespace: str, identity: str, *, lease_seconds: int = LEASE_SECONDS,
                 renew_deadline: float = RENEW_DEADLINE, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.coordination = k8s.CoordinationV1Api(client.api)  # (the chart's RBAC test reads its calls by this name)
        self.namespace = namespace
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline
        self.clock = clock
        self.holder = ""  # as last read
        self._renewed_at: float | None = None  # when the last successful renewal was sent
        self._observed: tuple[str, str, str] | None = None  # (holder, renewTime, resourceVersion)
        self._observed_at = 0.0
        self._errors = _Once(f"autoscaler election (lease {LEADER_LEASE!r} in {namespace!r})")

    def is_leader(self) -> bool:
        return self._renewed_at is not None and self.clock() - self._renewed_at < self.renew_deadline

    def _spec(self, acquired: str, transitions: int) -> dict[str, Any]:
        now = micro_time(time.time())
        return {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": acquired or now, "renewTime": now, "leaseTransitions": transitions}

    async def try_once(self) -> None:
        """Create, renew or take over the Lease if this gateway may; else note who holds it."""
        began = self.clock()
        was = self.is_leader()
        try:
            await self._try(began)
            self._errors.ok()
        except Conflict:
            pass  # another gateway wrote it since it was read: the next round reads it again
        except StreamfaasError as exc:
            self._errors.failed(exc)  # a leader stops by itself past its renew deadline
        if was != self.is_leader():
            log.warning("autoscaler: %s %s the leader", self.identity, "is now" if self.is_leader() else "is no longer")

    async def _try(self, began: float) -> None:
        coordination, ns = self.coordination, self.namespace
        obj: dict[str, Any] | None = None
        with contextlib.suppress(FunctionNotFound), api_errors(f"read lease {LEADER_LEASE!r}", missing=lambda: FunctionNotFound(LEADER_LEASE)):
            obj = await self.client.raw_json(coordination.read_namespaced_lease(LEADER_LEASE, ns, _preload_content=False, _request_timeout=CALL_TIMEOUT))
        if obj is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": LEADER_LEASE, "namespace": ns, "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
                    "spec": self._spec("", 0)}
            with api_errors(f"create lease {LEADER_LEASE!r}"):
                obj = await self.client.raw_json(coordination.create_namespaced_lease(ns, body, _preload_content=False, _request_timeout=CALL_TIMEOUT))
        else:
            spec, meta = obj.get("spec") or {}, obj.get("metadata") or {}
            self.holder = str(spec.get("holderIdentity") or "")
            record = (self.holder, str(spec.get("renewTime")), str(meta.get("resourceVersion")))
            if record != self._observed:
                self._observed, self._observed_at = record, began
            duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
            if self.holder and self.holder != self.identity and began - self._observed_at < duration:
                self._renewed_at = None
                return  # held, and renewed within its duration as this gateway saw it
            mine = self.holder == self.identity
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
            body = {**obj, "spec": self._spec(str(spec.get("acquireTime") or "") if mine else "", transitions)}
            with api_errors(f"update lease {LEADER_LEASE!r}"):  # 409 if written since read
                obj = await self.client.raw_json(coordination.replace_namespaced_lease(LEADER_LEASE, ns, body, _preload_content=False, _request_timeout=CALL_TIMEOUT))
        spec, meta = obj.get("spec") or {}, obj.get("metadata") or {}
        self.holder = self.identity
        self._observed = (self.identity, str(spec.get("renewTime")), str(meta.get("resourceVersion")))
        self._observed_at = self._renewed_at = began

    async def release(self) -> None:
        """Hand the Lease back (if held) so another gateway takes over at its next try."""
        if self._observed is None or self._observed[0] != self.identity:
            return
        self._renewed_at = None
        coordination, ns = self.coordination, self.namespace
        with contextlib.suppress(StreamfaasError), api_errors(f"release lease {LEADER_LEASE!r}"):
            obj = await self.client.raw_json(coordination.read_namespaced_lease(LEADER_LEASE, ns, _preload_content=False, _request_timeout=CALL_TIMEOUT))
            if (obj.get("spec") or {}).get("holderIdentity") == self.identity:
                now = micro_time(time.time())
                obj["spec"] = {**obj["spec"], "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now}
                await self.client.raw_json(coordination.replace_namespaced_lease(LEADER_LEASE, ns, obj, _preload_content=False, _request_timeout=CALL_TIMEOUT))


class LoadBoard:
    """This gateway's load Lease, and (for the leader) the other gateways' fresh ones."""

    def __init__(self, client: KubeClient, namespace: str, identity: str, *, stale_after: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.coordination = k8s.CoordinationV1Api(client.api)
        self.namespace = namespace
        self.identity = identity
        self.name = (LOAD_LEASE_PREFIX + identity)[:253]
        self.stale_after = stale_after
        self.clock = clock
        self._exists = False
        self._seen: dict[str, tuple[str, float]] = {}  # lease name -> (resourceVersion, when it changed)
        self._bad: set[str] = set()  # leases whose annotation did not parse (logged once)

    async def publish(self, loads: dict[str, Counts]) -> None:
        coordination, ns = self.coordination, self.namespace
        spec = {"holderIdentity": self.identity, "renewTime": micro_time(time.time()),
                "leaseDurationSeconds": max(math.ceil(self.stale_after), 1)}
        annotations = {LOAD_ANNOTATION: _LOADS.dump_json(loads).decode()}
        if self._exists:
            try:
                with api_errors(f"update lease {self.name!r}", missing=lambda: FunctionNotFound(self.name)):
                    await self.client.raw_json(coordination.patch_namespaced_lease(
                        self.name, ns, {"metadata": {"annotations": annotations}, "spec": spec},
                        _preload_content=False, _request_timeout=CALL_TIMEOUT))
                return
            except FunctionNotFound:
                self._exists = False  # deleted (taken for a dead gateway's): made again below
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": spec,
                "metadata": {"name": self.name, "namespace": ns, "annotations": annotations,
                             "labels": {LOAD_LABEL: "true", MANAGED_BY_LABEL: MANAGED_BY}}}
        with contextlib.suppress(Conflict), api_errors(f"create lease {self.name!r}"):
            await self.client.raw_json(coordination.create_namespaced_lease(ns, body, _preload_content=False, _request_timeout=CALL_TIMEOUT))
        self._exists = True  # (a Conflict: it is there already, and the next round patches it)

    async def others(self) -> dict[str, dict[str, Counts]]:
        """The other gateways' loads (by identity) that changed within ``stale_after``, as this
        gateway's clock saw them change; deletes those unchanged for ``FORGET_AFTER``."""
        coordination, ns = self.coordination, self.namespace
        with api_errors("list gateway load leases"):
            listed = await self.client.raw_json(coordination.list_namespaced_lease(
                ns, label_selector=f"{LOAD_LABEL}=true", _preload_content=False, _request_timeout=CALL_TIMEOUT))
        now, wall = self.clock(), time.time()
        fresh: dict[str, dict[str, Counts]] = {}
        seen: dict[str, tuple[str, float]] = {}
        for obj in listed.get("items") or []:
            meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
            name, version = str(meta.get("name") or ""), str(meta.get("resourceVersion") or "")
            if name == self.name:
                continue
            held = self._seen.get(name)
            if held is None or held[0] != version:
                # First sight: as old as its renewTime says (the writer's clock; only this once).
                renewed = parse_time(spec.get("renewTime"))
                age = max(wall - renewed, 0.0) if renewed is not None else self.stale_after
                held = (version, now - (age if held is None else 0.0))
            seen[name] = held
            if now - held[1] > FORGET_AFTER:
                with contextlib.suppress(StreamfaasError), api_errors(f"delete lease {name!r}"):
                    await coordination.delete_namespaced_lease(name, ns, _request_timeout=CALL_TIMEOUT)
                continue
            if now - held[1] > self.stale_after:
                continue
            loads = self._parse(name, (meta.get("annotations") or {}).get(LOAD_ANNOTATION))
            if loads is not None:
                fresh[str(spec.get("holderIdentity") or name)] = loads
        self._seen = seen
        return fresh

    def _parse(self, name: str, raw: object) -> dict[str, Counts] | None:
        try:
            return _LOADS.validate_json(str(raw or "{}"))
        except ValidationError:
            if name not in self._bad:
                self._bad.add(name)
                log.warning("autoscaler: lease %r: annotation %s is not a load map; its load is left out", name, LOAD_ANNOTATION)
            return None

    async def withdraw(self) -> None:
        if self._exists:
            self._exists = False
            with contextlib.suppress(StreamfaasError), api_errors(f"delete lease {self.name!r}"):
                await self.coordination.delete_namespaced_lease(self.name, self.namespace, _request_timeout=CALL_TIMEOUT)


class ClusterLoad(Collector):
    """The autoscaler's ``LoadSource`` and ``is_leader`` with several gateways on one cluster:
    only the Lease's holder decides, on the load summed over every gateway."""

    def __init__(self, provider: KubernetesProvider, *, interval: float, identity: str | None = None,
                 lease_seconds: int = LEASE_SECONDS, renew_every: float = RENEW_EVERY) -> None:
        self.provider = provider
        self.interval = interval
        self.identity = identity or gateway_identity()
        self.lease_seconds = lease_seconds
        self.renew_every = renew_every
        self.stale_after = max(3 * interval, 3.0)
        self._election: LeaderElection | None = None
        self._board: LoadBoard | None = None
        self._others: dict[str, dict[str, Counts]] = {}
        self._task: asyncio.Task[None] | None = None
        self._errors = _Once("autoscaler: sharing this gateway's load")

    @classmethod
    def for_provider(cls, provider: Provider, *, interval: float) -> ClusterLoad:
        if not isinstance(provider, KubernetesProvider):
            raise TypeError(f"ClusterLoad needs the kubernetes provider, not {provider.name!r}")
        return cls(provider, interval=interval)

    def is_leader(self) -> bool:
        return self._election is not None and self._election.is_leader()

    async def start(self) -> None:
        client, ns = self.provider.client, self.provider.default_namespace
        self._election = LeaderElection(client, ns, self.identity, lease_seconds=self.lease_seconds,
                                        renew_deadline=min(RENEW_DEADLINE, self.lease_seconds * 0.7))
        self._board = LoadBoard(client, ns, self.identity, stale_after=self.stale_after)
        self._task = asyncio.create_task(self._run(), name="autoscaler-lease")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._election is not None:
            await self._election.release()
        if self._board is not None:
            await self._board.withdraw()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._elect())
            tasks.create_task(self._share())

    async def _elect(self) -> None:
        assert self._election is not None
        while True:
            began = time.monotonic()
            try:
                await self._election.try_once()
            except Exception:  # one bad round must not end the election for good
                log.exception("autoscaler: election round failed")
            await asyncio.sleep(max(self.renew_every - (time.monotonic() - began), 0.0))

    async def _share(self) -> None:
        assert self._board is not None
        while True:
            began = time.monotonic()
            try:
                await self._board.publish(self._own_loads())
                self._others = await self._board.others() if self.is_leader() else {}
                self._errors.ok()
            except StreamfaasError as exc:
                self._others = {}
                self._errors.failed(exc)
            except Exception:  # one bad round must not end the sharing for good
                self._others = {}
                log.exception("autoscaler: load sharing round failed")
            await asyncio.sleep(max(self.interval - (time.monotonic() - began), 0.0))

    def _own_loads(self) -> dict[str, Counts]:
        out: dict[str, Counts] = {}
        p = self.provider
        for ns in p.namespaces():
            try:
                statuses = p.statuses(ns)
            except StreamfaasError:
                continue  # a namespace that cannot be read now
            for status in statuses:
                with contextlib.suppress(StreamfaasError):
                    load = p.load(status.name, ns)
                    if load.inflight or load.waiting or load.requests:
                        out[f"{ns}/{status.name}"] = (load.inflight, load.waiting, load.requests)
        return out

    async def load(self, name: str, namespace: str, *, cpu: bool) -> FunctionLoad:
        """This gateway's count, plus (on the leader) every other gateway's fresh share."""
        own = self.provider.load(name, namespace, cpu=cpu)
        key = f"{namespace or self.provider.default_namespace}/{name}"
        shares = [loads[key] for loads in self._others.values() if key in loads]
        if not shares or not self.is_leader():
            return own
        return replace(own, inflight=own.inflight + sum(s[0] for s in shares),
                       waiting=own.waiting + sum(s[1] for s in shares), requests=own.requests + sum(s[2] for s in shares))

    def collect(self) -> Iterable[Metric]:
        leader = GaugeMetricFamily("streamfaas_autoscaler_leader",
                                   "1 on the gateway whose autoscaler decides for the cluster (it holds the Lease).",
                                   labels=["identity"])
        leader.add_metric([self.identity], 1.0 if self.is_leader() else 0.0)
        yield leader
        yield GaugeMetricFamily("streamfaas_autoscaler_gateways",
                                "Gateways whose load the leader sums, itself included (0 on the others).",
                                value=1 + len(self._others) if self.is_leader() else 0)
