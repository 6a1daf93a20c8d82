"""Where each function's ready pods are, from its Endpoints, and which one takes a request.

The gateway connects to pod addresses directly (``http://POD_IP:8080``): no Service, no
ClusterIP, no kube-proxy on the hot path. A pod stays the same ``PodEndpoint`` object across
Endpoints updates, so the requests counted open on it (``inflight``) survive them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from ._objects import WATCHDOG_PORT
from ._watch import Key, key_of


@dataclass(eq=False)
class PodEndpoint:
    id: str  # the pod's name (X-Served-By: NAME[POD])
    url: str
    session: aiohttp.ClientSession
    inflight: int = 0


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
        self._turn = 0

    def update(self, obj: dict[str, Any]) -> Key:
        key = key_of(obj)
        held = {(e.id, e.url): e for e in self._by_function.get(key, [])}
        fresh = [held.get(a) or PodEndpoint(a[0], a[1], self.session) for a in ready_addresses(obj)]
        if fresh:
            self._by_function[key] = fresh
        else:
            self._by_function.pop(key, None)
        return key

    def remove(self, key: Key) -> None:
        self._by_function.pop(key, None)

    def ready(self, key: Key) -> list[PodEndpoint]:
        return list(self._by_function.get(key, []))

    def pick(self, key: Key) -> PodEndpoint | None:
        """The ready pod with the fewest open requests (a stream holds one for its whole life);
        ties go round in turn, so idle pods share the load."""
        ready = self._by_function.get(key)
        if not ready:
            return None
        self._turn += 1
        n = len(ready)
        best = ready[self._turn % n]
        for i in range(1, n):
            candidate = ready[(self._turn + i) % n]
            if candidate.inflight < best.inflight:
                best = candidate
        return best
