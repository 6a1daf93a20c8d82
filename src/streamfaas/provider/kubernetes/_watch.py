"""A list-and-watch cache of one kind of object (an informer, as client-go names it).

The provider answers its reads (which functions there are, their status, where their ready
pods are) from these caches, kept current by a watch, so no request waits on the API server.
A watch that ends is resumed from the last resource version; one whose version is gone (410)
or that fails starts over with a fresh list.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from ...errors import StreamfaasError
from ._api import API_TIMEOUT, KubeClient, api_message

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
OnChange = Callable[[str, dict[str, Any]], None]  # (ADDED | MODIFIED | DELETED, object)

WATCH_SECONDS = 240  # the server ends a watch after this; it is resumed at once
RETRY_FIRST = 0.5
RETRY_MAX = 10.0
log = logging.getLogger("streamfaas.kubernetes")


def key_of(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _version(obj: dict[str, Any]) -> int | None:
    raw = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(str(raw))
    except (TypeError, ValueError):
        return None


class _Expired(Exception):
    """The watch's resource version is too old (410 Gone): list again."""


class Informer:
    def __init__(self, client: KubeClient, kind: str, lister: Callable[..., Awaitable[Any]], selector: str, on_change: OnChange,
                 *, on_state: Callable[[Informer], None] | None = None) -> None:
        self.client = client
        self.kind = kind  # what it lists, for messages ("deployments in 'ns'")
        # A list_namespaced_* bound to its namespace (or list_namespace): nothing cluster-wide
        # beyond namespaces, so the gateway needs read access only where it serves functions.
        self.lister = lister
        self.selector = selector
        self.on_change = on_change
        # Told of each change of ``error`` and of each successful list; None: errors are logged.
        self.on_state = on_state
        self.objects: dict[Key, dict[str, Any]] = {}
        # Objects this process deleted, with their last version: a watch event from before the
        # delete, still on its way, does not bring them back.
        self._gone: dict[Key, int | None] = {}
        self.synced = asyncio.Event()
        self.error = ""  # why the last list or watch failed, until one succeeds
        self.refused = False  # that failure was the API refusing the gateway's credentials (401/403)

    def get(self, key: Key) -> dict[str, Any] | None:
        return self.objects.get(key)

    def put(self, obj: dict[str, Any]) -> None:
        """A writer's own result, seen before its watch event: kept unless older than what is held."""
        key = key_of(obj)
        held = self.objects.get(key)
        new, old = _version(obj), (_version(held) if held else None)
        if held is not None and new is not None and old is not None and new < old:
            return
        self.objects[key] = obj
        self.on_change("MODIFIED" if held else "ADDED", obj)

    def drop(self, key: Key, *, deleted_here: bool = False) -> None:
        held = self.objects.pop(key, None)
        if deleted_here:
            self._gone[key] = _version(held) if held else None
        if held is not None:
            self.on_change("DELETED", held)

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        key = key_of(obj)
        new = _version(obj)
        if key in self._gone:
            gone = self._gone[key]
            if new is None or gone is None or new <= gone:
                return
            del self._gone[key]  # made again since
        held = self.objects.get(key)
        old = _version(held) if held else None
        if held is None or new is None or old is None or new >= old:
            self.objects[key] = obj
            self.on_change(kind, obj)

    async def run(self) -> None:
        """List and watch until cancelled."""
        delay = RETRY_FIRST
        while True:
            try:
                version = await self._list()
                self._failed("", refused=False)
                delay = RETRY_FIRST
                while True:
                    version = await self._watch(version)
            except _Expired:
                continue
            except asyncio.CancelledError:
                raise
            except (ApiException, aiohttp.ClientError, TimeoutError, OSError, ValueError, StreamfaasError) as exc:
                why = api_message(exc) if isinstance(exc, ApiException) else f"{type(exc).__name__}: {exc}"
                self._failed(why, refused=isinstance(exc, ApiException) and exc.status in (401, 403))
                await asyncio.sleep(delay)  # a backoff between attempts, not a synchronisation
                delay = min(delay * 2, RETRY_MAX)

    def _failed(self, why: str, *, refused: bool) -> None:
        """Record why the last attempt failed ("" when it succeeded); report it once per change."""
        changed = why != self.error
        self.error, self.refused = why, refused
        if self.on_state is not None:
            if changed or not why:
                self.on_state(self)
        elif changed and why:
            log.warning("watching %s: %s; retrying", self.kind, why)

    async def _list(self) -> str:
        data = await self.client.raw_json(
            self.lister(label_selector=self.selector, _preload_content=False, _request_timeout=API_TIMEOUT)
        )
        items = {key_of(o): o for o in data.get("items") or []}
        self._gone.clear()  # a fresh list is the truth: what it holds exists now
        for key in [k for k in self.objects if k not in items]:
            self.drop(key)
        for key, obj in items.items():
            held = self.objects.get(key)
            if held is None or _version(held) != _version(obj):
                self.objects[key] = obj
                self.on_change("MODIFIED" if held else "ADDED", obj)
        self.synced.set()
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, version: str) -> str:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=API_TIMEOUT, sock_read=WATCH_SECONDS + API_TIMEOUT)
        resp = await self.client.raw(self.lister(
            label_selector=self.selector, watch=True, resource_version=version, allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS, _preload_content=False, _request_timeout=timeout,
        ))
        try:
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Expired
                    raise ValueError(f"watch error: {obj.get('message') or obj}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                if kind == "DELETED":
                    self._gone.pop(key_of(obj), None)
                    self.drop(key_of(obj))
                elif kind in ("ADDED", "MODIFIED"):
                    self._apply(kind, obj)
        finally:
            resp.release()
        return version
