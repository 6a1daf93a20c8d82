"""Where each function's ready pods are, from its Endpoints, and which one takes a request.

The gateway connects to pod addresses directly (``http://POD_IP:8080``): no Service, no
ClusterIP, no kube-proxy on the hot path. A pod stays the same ``PodEndpoint`` object across
Endpoints updates, so the requests counted open on it (``inflight``) survive them.

A pod can also be here before its Endpoints list it ready: "probed" by the gateway itself
(``_activator.py``) while a request waits for a function with no ready pod. It is picked only
while the function has no ready address, and becomes an ordinary entry, the same object with
its count, once the Endpoints list it.

A pod the Endpoints drop (terminating: scaled down, replaced) while the gateway still has
streams open on it is kept aside as "draining" until they end: it takes no new request, and
its streams still count in the function's load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp

from ...upstream import Pool
from ..base import least_loaded
from ._objects import WATCHDOG_PORT
from ._watch import Key, key_of


class PodEndpoint:
    """One pod the gateway may send requests to. ``inflight`` counts the requests it has
    open there; lowering it (a request ended) calls ``on_release``, so requests waiting for a
    free slot (``KubernetesProvider.acquire``) try again."""

    __slots__ = ("id", "url", "session", "pool", "key", "on_release", "probed_until", "_inflight")

    def __init__(self, id: str, url: str, session: aiohttp.ClientSession, pool: Pool, *, key: Key = ("", ""),
                 on_release: Callable[[Key], None] | None = None) -> None:
        self.id = id  # the pod's name (X-Served-By: NAME[POD])
        self.url = url
        self.session = session  # probes
        self.pool = pool  # requests
        self.key = key
        self.on_release = on_release
        # While only probed (not listed ready in Endpoints): the monotonic time its probe stops
        # vouching for it. After that a waiting request has it probed again, not sent there blind.
        self.probed_until = 0.0
        self._inflight = 0

    @property
    def inflight(self) -> int:
        return self._inflight

    @inflight.setter
    def inflight(self, value: int) -> None:
        released = value < self._inflight
        self._inflight = value
        if released and self.on_release is not None:
            self.on_release(self.key)

    def __repr__(self) -> str:
        return f"PodEndpoint({self.id!r}, {self.url!r}, inflight={self._inflight})"


def ready_addresses(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """``(pod name, url)`` of each ready address of an Endpoints object."""
    out = []
    for subset in obj.get("subsets") or []:
        ports = subset.get("ports") or []
        port = next((p.get("port") for p in ports if p.get("name") == "http"), None)
        if port is None:
            port = ports[0].get("port") if len(ports) == 1 else WATCHDOG_PORT
        for address in subset.get("addresses") or []:  # notReadyAddresses are left out
            ip = address.get("ip")
            if not ip:
                continue
            pod = (address.get("targetRef") or {}).get("name") or ip
            host = f"[{ip}]" if ":" in ip else ip
            out.append((str(pod), f"http://{host}:{port}"))
    return sorted(out)


class EndpointTable:
    def __init__(self, session: aiohttp.ClientSession, on_release: Callable[[Key], None] | None = None,
                 pool: Pool | None = None) -> None:
        self.session = session
        self.pool = pool if pool is not None else Pool(keepalive=30)
        self.on_release = on_release  # a request on one of the function's pods ended
        self._by_function: dict[Key, list[PodEndpoint]] = {}
        self._probed: dict[Key, dict[str, PodEndpoint]] = {}  # by pod name
        self._draining: dict[Key, list[PodEndpoint]] = {}  # dropped from Endpoints, streams still open
        self._turn = 0

    def _new(self, key: Key, pod: str, url: str) -> PodEndpoint:
        return PodEndpoint(pod, url, self.session, self.pool, key=key, on_release=self.on_release)

    def update(self, obj: dict[str, Any]) -> Key:
        key = key_of(obj)
        probed = self._probed.get(key, {})
        before = [*self._by_function.get(key, []), *self._draining.get(key, [])]
        held = {(e.id, e.url): e for e in [*before, *probed.values()]}
        fresh = [held.get(a) or self._new(key, *a) for a in ready_addresses(obj)]
        kept = set(map(id, fresh))
        draining = [e for e in before if e.inflight > 0 and id(e) not in kept]
        if draining:
            self._draining[key] = draining
        else:
            self._draining.pop(key, None)
        if fresh:
            self._by_function[key] = fresh
        else:
            self._by_function.pop(key, None)
        for e in fresh:  # listed ready now: the Endpoints vouch for it from here on
            if probed.get(e.id) is e:
                del probed[e.id]
                e.probed_until = 0.0
        if not probed:
            self._probed.pop(key, None)
        return key

    def remove(self, key: Key) -> None:
        self._by_function.pop(key, None)
        self._probed.pop(key, None)
        self._draining.pop(key, None)

    def add_probed(self, key: Key, pod: str, url: str, until: float) -> PodEndpoint:
        """A pod that answered the gateway's readiness probe; kept (the same object) until
        its Endpoints list it ready, or ``drop_probed``."""
        if any(e.id == pod for e in self._by_function.get(key, [])):
            return next(e for e in self._by_function[key] if e.id == pod)
        probed = self._probed.setdefault(key, {})
        held = probed.get(pod)
        if held is None or held.url != url:
            held = probed[pod] = self._new(key, pod, url)
        held.probed_until = until
        return held

    def drop_probed(self, key: Key, pod: str) -> None:
        probed = self._probed.get(key)
        if probed is not None and probed.pop(pod, None) is not None and not probed:
            del self._probed[key]

    def probed(self, key: Key) -> dict[str, PodEndpoint]:
        """The pods only probed ready (not listed ready in Endpoints), by name, vouched for or not."""
        return dict(self._probed.get(key, {}))

    def ready(self, key: Key) -> list[PodEndpoint]:
        return list(self._by_function.get(key, []))

    def draining(self, key: Key) -> list[PodEndpoint]:
        """Pods no longer listed whose streams (from this gateway) are still open."""
        held = self._draining.get(key)
        if not held:
            return []
        left = [e for e in held if e.inflight > 0]
        if len(left) != len(held):
            if left:
                self._draining[key] = left
            else:
                del self._draining[key]
        return left

    def _candidates(self, key: Key) -> list[PodEndpoint]:
        ready = self._by_function.get(key)
        if ready:
            return ready
        # None listed ready yet: a pod the gateway probed itself, while that probe holds.
        now = time.monotonic()
        return [e for e in self._probed.get(key, {}).values() if e.probed_until > now]

    def pick(self, key: Key, capacity: int | None = None) -> PodEndpoint | None:
        """The ready pod with the fewest open requests (a stream holds one for its whole life),
        among those with fewer than ``capacity`` open (None: no limit); ties go round in turn,
        so idle pods share the load."""
        ready = self._candidates(key)
        if capacity is not None:
            ready = [e for e in ready if e.inflight < capacity]
        if not ready:
            return None
        self._turn += 1
        return least_loaded(ready, self._turn)

    def full(self, key: Key, capacity: int | None) -> bool:
        """The function has a pod to send to, and each has ``capacity`` requests open."""
        ready = self._candidates(key)
        return bool(ready) and capacity is not None and all(e.inflight >= capacity for e in ready)
