"""A function's logs from its pods' log API: each line stamped by the kubelet (``timestamps``),
and named after its pod (``instance``).

Without ``follow`` every pod's lines are read, merged in time order, and the last ``tail``
kept. With ``follow`` each pod is streamed (its last ``tail`` lines, then new ones), and pods
that start later join, until the function is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from ..logs import LogLine
from ._api import API_TIMEOUT, KubeClient

_END = object()


def parse_line(raw: bytes, pod: str) -> LogLine | None:
    """``2026-01-02T03:04:05.123456789Z text`` as a LogLine (the kubelet's nanoseconds cut to
    the microseconds Python keeps)."""
    text = raw.decode(errors="replace").rstrip("\n").rstrip("\r")
    stamp, _, rest = text.partition(" ")
    head, dot, frac = stamp.removesuffix("Z").partition(".")
    try:
        t = dt.datetime.fromisoformat(head + (dot + frac[:6] if dot else "")).replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return LogLine(t.timestamp(), pod, rest)


def _runs(pod: dict[str, Any]) -> bool:
    """Whether the pod's container has started at least once (else the API has no log for it)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        state = cs.get("state") or {}
        if "running" in state or "terminated" in state or (cs.get("lastState") or {}).get("terminated"):
            return True
    return False


class PodLogs:
    def __init__(self, client: KubeClient, namespace: str, function: str, pods: Callable[[], list[dict[str, Any]]],
                 alive: Callable[[], bool], changed: Callable[[], asyncio.Event]) -> None:
        self.client = client
        self.namespace = namespace
        self.function = function
        self.pods = pods  # the function's pods now (from the pod watch)
        self.alive = alive  # the function is still deployed
        self.changed = changed  # an event set at the next change of its pods

    async def _open(self, pod: str, *, follow: bool, tail: int, since: float | None) -> aiohttp.ClientResponse | None:
        kwargs: dict[str, Any] = {"container": self.function, "timestamps": True, "follow": follow}
        if tail >= 0:
            kwargs["tail_lines"] = tail
        if since is not None:
            kwargs["since_seconds"] = max(1, math.ceil(time.time() - since))
        timeout = aiohttp.ClientTimeout(total=None if follow else API_TIMEOUT, sock_connect=API_TIMEOUT)
        try:
            return await self.client.raw(self.client.core.read_namespaced_pod_log(
                pod, self.namespace, _preload_content=False, _request_timeout=timeout, **kwargs))
        except (ApiException, aiohttp.ClientError, TimeoutError):
            return None  # gone, or not started yet: it has nothing to show

    async def _lines(self, pod: str, *, follow: bool, tail: int, since: float | None) -> AsyncIterator[LogLine]:
        resp = await self._open(pod, follow=follow, tail=tail, since=since)
        if resp is None:
            return
        try:
            async for raw in resp.content:
                line = parse_line(raw, pod)
                if line is not None and (since is None or line.time >= since):
                    yield line
        except (aiohttp.ClientError, TimeoutError):
            return  # the pod went away mid-stream
        finally:
            resp.release()

    async def read(self, *, tail: int, since: float | None, follow: bool) -> AsyncIterator[LogLine]:
        if not follow:
            merged: list[LogLine] = []
            for pod in self._pod_names():
                merged += [ln async for ln in self._lines(pod, follow=False, tail=tail, since=since)]
            merged.sort(key=lambda ln: ln.time)
            for line in deque(merged, maxlen=tail) if tail >= 0 else merged:
                yield line
            return
        queue: asyncio.Queue[LogLine | object] = asyncio.Queue(maxsize=1000)
        following: dict[str, asyncio.Task[None]] = {}

        async def pump(pod: str, first: bool) -> None:
            # A pod that joins later is read from its start: all its lines are new.
            async for line in self._lines(pod, follow=True, tail=tail if first else -1, since=since):
                await queue.put(line)

        async def watch_pods() -> None:
            first = True
            while self.alive():
                change = self.changed()
                for pod in self._pod_names():
                    if pod not in following:
                        following[pod] = asyncio.create_task(pump(pod, first))
                first = False
                await change.wait()
            await queue.put(_END)

        watcher = asyncio.create_task(watch_pods())
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                assert isinstance(item, LogLine)
                yield item
        finally:
            tasks = [watcher, *following.values()]
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _pod_names(self) -> list[str]:
        pods = [p for p in self.pods() if _runs(p)]
        pods.sort(key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))
        return [str(p["metadata"]["name"]) for p in pods]
