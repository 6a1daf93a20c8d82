"""The gateway's own readiness probe of a function's new pods, as Knative's activator does.

A pod's Ready condition, and with it its Endpoints, lag the function inside it by ~0.7–1.1 s:
the kubelet learns that the container runs at its next 1-s relist, and probes it only on the
tick after that. So while requests wait for a function with no ready pod (woken from zero, or
all its pods gone), the gateway probes each new pod's watchdog itself (``/_/ready``, every
``PROBE_EVERY``) from the moment the Pod watch shows its address, and the waiting requests go
to the first pod that answers 200. The Endpoints take over when they list it ready
(``EndpointTable.update`` keeps the same ``PodEndpoint``, so its open requests stay counted).

Only a pod of the Deployment's current ReplicaSet is probed: never one of an older version
being replaced, never one that is terminating or failing to start. Every probe task is
cancelled as soon as no request waits for its function, its pod stops qualifying, or the
function has a ready address; ``close`` cancels and awaits what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp

from ._endpoints import EndpointTable
from ._objects import FUNCTION_LABEL, WATCHDOG_PORT, pod_start_error
from ._watch import Key

READY_PATH = "/_/ready"
PROBE_EVERY = 0.015  # a refused connect answers at once: this is the latency it adds
# A pod's address is on the node's bridge, so a connect is answered (or refused) at once; the
# first answer of a watchdog just started, on a loaded node, may take longer.
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=1.0, sock_connect=0.25)
PROBED_FOR = 3.0  # how long one 200 vouches for a pod its Endpoints do not list yet

# How the deployment controller names the newest ReplicaSet in the Progressing condition
# ("ReplicaSet \"fn-5d4c\" is progressing.", "Created new replica set \"fn-5d4c\"", ...).
_NEW_REPLICASET = re.compile(r'(?:ReplicaSet|replica set) "([^"]+)"')


def current_replicaset(deployment: dict[str, Any] | None) -> str:
    """The name of the Deployment's newest ReplicaSet (the one of its current pod template),
    from its Progressing condition once the controller has seen its latest spec; "" when that
    is not known (then no pod is probed, and requests wait for Endpoints as without this)."""
    if not deployment:
        return ""
    meta, status = deployment.get("metadata") or {}, deployment.get("status") or {}
    if int(status.get("observedGeneration") or -1) < int(meta.get("generation") or 0):
        return ""  # the condition may still name the version before the latest change
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing":
            found = _NEW_REPLICASET.search(str(cond.get("message") or ""))
            name = found.group(1) if found else ""
            return name if name.startswith(f"{meta.get('name')}-") else ""
    return ""


def serving_url(pod: dict[str, Any], function: str, replicaset: str) -> str | None:
    """The watchdog's URL of a pod that may serve ``function`` now (of its current ReplicaSet,
    with an address, not terminating, not failing to start); else None."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if not replicaset or meta.get("deletionTimestamp") or (meta.get("labels") or {}).get(FUNCTION_LABEL) != function:
        return None
    owner: dict[str, Any] = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), {})
    if owner.get("kind") != "ReplicaSet" or owner.get("name") != replicaset:
        return None
    ip = status.get("podIP")
    if not ip or status.get("phase") not in ("Pending", "Running") or pod_start_error(pod):
        return None
    if any("terminated" in (c.get("state") or {}) for c in status.get("containerStatuses") or []):
        return None  # exited (a restart comes with a new start): not what answered before
    port = WATCHDOG_PORT
    for container in (pod.get("spec") or {}).get("containers") or []:
        named = [p.get("containerPort") for p in container.get("ports") or [] if p.get("name") == "http"]
        if named and named[0]:
            port = int(named[0])
            break
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    return f"http://{host}:{port}"


class Activator:
    def __init__(
        self,
        table: EndpointTable,
        *,
        pods: Callable[[Key], list[dict[str, Any]]],
        deployment: Callable[[Key], dict[str, Any] | None],
        notify: Callable[[Key], None],
        timeout: float,
    ) -> None:
        self.table = table
        self._pods = pods  # the function's pods not terminating, from the Pod watch
        self._deployment = deployment
        self._notify = notify  # wakes the requests waiting for the function
        self.timeout = timeout  # no probe outlives the cold-start timeout
        self._waiters: dict[Key, int] = {}
        self._probes: dict[Key, dict[str, asyncio.Task[None]]] = {}  # by pod name
        self._ending: set[asyncio.Task[None]] = set()  # cancelled, not yet ended

    @contextlib.contextmanager
    def waiting(self, key: Key) -> Iterator[None]:
        """Held by a request while it waits for a pod of the function."""
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._waiters[key] - 1
            if left:
                self._waiters[key] = left
            else:
                del self._waiters[key]
                self._stop(key, keep=set())

    def probing(self) -> int:
        """Probe tasks running or ending (none once no request waits, and after ``close``)."""
        return sum(len(p) for p in self._probes.values()) + len(self._ending)

    def on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        function = str((meta.get("labels") or {}).get(FUNCTION_LABEL, ""))
        key = (str(meta.get("namespace") or ""), function)
        name = str(meta.get("name") or "")
        held = self.table.probed(key).get(name)
        if held is not None:
            url = None if kind == "DELETED" else serving_url(pod, function, current_replicaset(self._deployment(key)))
            if url != held.url:
                self.table.drop_probed(key, name)  # gone, terminating, failing, or replaced
        self.refresh(key)

    def refresh(self, key: Key) -> None:
        """Probe each pod of the function's current version that may serve, while requests
        wait for it and none is listed ready (and one answered probe does not vouch for it
        still); stop every other probe of it."""
        wanted: dict[str, str] = {}
        if self._waiters.get(key) and not self.table.ready(key):
            replicaset = current_replicaset(self._deployment(key))
            probed, now = self.table.probed(key), time.monotonic()
            for pod in self._pods(key):
                name = str((pod.get("metadata") or {}).get("name") or "")
                url = serving_url(pod, key[1], replicaset)
                held = probed.get(name)
                if url is not None and not (held is not None and held.url == url and held.probed_until > now):
                    wanted[name] = url
        self._stop(key, keep=set(wanted))
        probes = self._probes.setdefault(key, {})
        for name, url in wanted.items():
            if name not in probes:
                task = probes[name] = asyncio.create_task(self._probe(key, name, url))
                task.add_done_callback(functools.partial(self._forget, key, name))
        if not probes:
            del self._probes[key]

    def _stop(self, key: Key, *, keep: set[str]) -> None:
        probes = self._probes.get(key, {})
        for name in [n for n in probes if n not in keep]:
            task = probes.pop(name)
            task.cancel()
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)
        if not probes:
            self._probes.pop(key, None)

    def _forget(self, key: Key, name: str, task: asyncio.Task[None]) -> None:
        probes = self._probes.get(key)
        if probes is not None and probes.get(name) is task:
            del probes[name]
            if not probes:
                del self._probes[key]

    async def _probe(self, key: Key, pod: str, url: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                async with self.table.session.get(url + READY_PATH, timeout=PROBE_TIMEOUT) as r:
                    await r.read()  # read whole, so the connection is kept for the request
                    if r.status == 200:
                        self.table.add_probed(key, pod, url, time.monotonic() + PROBED_FOR)
                        self._notify(key)
                        return
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass  # not listening yet (refused), or slow: probe again
            await asyncio.sleep(PROBE_EVERY)  # a poll interval bounded by the deadline

    async def close(self) -> None:
        tasks = [*self._ending, *(t for p in self._probes.values() for t in p.values())]
        self._probes.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._ending.clear()
