"""Where each function's ready pods are, from its Endpoints, and which one takes a request.

The gateway connects to pod addresses directly (``http://POD_IP:8080``): no Service, no
ClusterIP, no kube-proxy on the hot path. A pod stays the same ``PodEndpoint`` object across
Endpoints updates, so the requests counted open on it (``inflight``) survive them.

A pod can also be here before its Endpoints list it ready: "probed" by the gateway itself
(``_activator.py``) while a request waits for a function with no ready pod. It is picked only
while the function has no ready address, and becomes an ordinary entry, the same object with
its count, once the Endpoints list it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..base import least_loaded
from ._objects import WATCHDOG_PORT
from ._watch import Key, key_of


@dataclass(eq=False)
class PodEndpoint:
    id: str  # the pod's name (X-Served-By: NAME[POD])
    url: str
    session: aiohttp.ClientSession
    inflight: int = 0
    # While only probed (not listed ready in Endpoints): the monotonic time its probe stops
    # vouching for it. After that a waiting request has it probed again, not sent there blind.
    probed_until: float = 0.0


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
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self._by_function: dict[Key, list[PodEndpoint]] = {}
        self._probed: dict[Key, dict[str, PodEndpoint]] = {}  # by pod name
        self._turn = 0

    def update(self, obj: dict[str, Any]) -> Key:
        key = key_of(obj)
        probed = self._probed.get(key, {})
        held = {(e.id, e.url): e for e in [*self._by_function.get(key, []), *probed.values()]}
        fresh = [held.get(a) or PodEndpoint(a[0], a[1], self.session) for a in ready_addresses(obj)]
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

    def add_probed(self, key: Key, pod: str, url: str, until: float) -> PodEndpoint:
        """A pod that answered the gateway's readiness probe; kept (the same object) until
        its Endpoints list it ready, or ``drop_probed``."""
        if any(e.id == pod for e in self._by_function.get(key, [])):
            return next(e for e in self._by_function[key] if e.id == pod)
        probed = self._probed.setdefault(key, {})
        held = probed.get(pod)
        if held is None or held.url != url:
            held = probed[pod] = PodEndpoint(pod, url, self.session)
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

    def pick(self, key: Key) -> PodEndpoint | None:
        """The ready pod with the fewest open requests (a stream holds one for its whole life);
        ties go round in turn, so idle pods share the load."""
        ready = self._by_function.get(key)
        if not ready:
            # None listed ready yet: a pod the gateway probed itself, while that probe holds.
            now = time.monotonic()
            ready = [e for e in self._probed.get(key, {}).values() if e.probed_until > now]
            if not ready:
                return None
        self._turn += 1
        return least_loaded(ready, self._turn)
