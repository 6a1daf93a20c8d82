"""The namespaces the gateway serves, each with its own informers.

Functions live in the functions namespace (``--namespace``) and in any namespace labelled
``openfaas=1``. Their Deployments, Endpoints and Pods are listed and watched namespace by
namespace (never cluster-wide), so the gateway needs only a Role in each namespace it serves
and, cluster-wide, read access to namespaces. A namespace whose objects the gateway may not
read is reported once in the log and refused by name; it never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ...errors import FunctionNotReady
from ._api import Forbidden, KubeClient
from ._objects import FUNCTION_LABEL, NAMESPACE_LABEL
from ._watch import Informer, OnChange, key_of

log = logging.getLogger("streamfaas.kubernetes")


class ServedNamespace:
    """The informers of one namespace's functions: their Deployments, Endpoints and Pods."""

    def __init__(self, client: KubeClient, name: str, *, on_deployment: OnChange, on_endpoints: OnChange, on_pod: OnChange) -> None:
        self.name = name
        core, apps = client.core, client.apps

        def informer(kind: str, lister: Callable[..., Awaitable[Any]], on_change: OnChange) -> Informer:
            return Informer(client, f"{kind} in {name!r}", lister, FUNCTION_LABEL, on_change, on_state=self._on_state)

        self.deployments = informer("deployments", functools.partial(apps.list_namespaced_deployment, name), on_deployment)
        self.endpoints = informer("endpoints", functools.partial(core.list_namespaced_endpoints, name), on_endpoints)
        self.pods = informer("pods", functools.partial(core.list_namespaced_pod, name), on_pod)
        self.informers = (self.deployments, self.endpoints, self.pods)
        # Set once every informer has listed, or one of them failed: whether the namespace
        # can be served is known (the start-up waits on this for the functions namespace).
        self.settled = asyncio.Event()
        self.refusal = ""  # the API's refusal while it refuses any of them, logged once
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(i.run()) for i in self.informers]

    def stop(self) -> list[asyncio.Task[None]]:
        """Cancel the watches and forget every object (each forgotten as deleted, so the
        functions and endpoints of the namespace go too). Returns the cancelled tasks: the
        caller awaits them."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()  # no event of it is handled after this: a cancelled task runs no further
        for informer in self.informers:
            for key in list(informer.objects):
                informer.drop(key)
        return tasks

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.informers)

    def check(self) -> None:
        """Raise the reason the namespace cannot be served now, if there is one."""
        if self.refusal:
            raise Forbidden(
                f"namespace {self.name!r}: the gateway's Kubernetes credentials may not read its functions "
                f"({self.refusal}); grant its service account the streamfaas Role in that namespace"
            )
        if not self.synced:
            why = next((i.error for i in self.informers if i.error), "")
            raise FunctionNotReady(
                f"namespace {self.name!r}: the gateway has not read its functions yet"
                + (f" ({why})" if why else "") + "; try again shortly"
            )

    def _on_state(self, informer: Informer) -> None:
        refused = next((i.error for i in self.informers if i.refused), "")
        if refused and not self.refusal:
            log.warning("namespace %r: the gateway may not read its functions (%s); requests for it are refused until "
                        "its service account is granted the streamfaas Role there; retrying", self.name, refused)
        elif self.refusal and not refused:
            log.info("namespace %r: its functions are readable again", self.name)
        self.refusal = refused
        if informer.error and not informer.refused:
            log.warning("watching %s: %s; retrying", informer.kind, informer.error)
        if self.synced or any(i.error for i in self.informers):
            self.settled.set()


class ServedNamespaces:
    """The functions namespace, always, and each namespace labelled ``openfaas=1`` while the
    namespace watch reports it: its informers start when it appears and stop when it goes or
    loses the label (a watch by label reports that as DELETED)."""

    def __init__(self, client: KubeClient, home: str, make: Callable[[str], ServedNamespace]) -> None:
        self.home = home
        self._make = make
        self._served: dict[str, ServedNamespace] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # the namespace watch, and cancelled ones not yet ended
        self.watch = Informer(client, "namespaces", client.core.list_namespace, f"{NAMESPACE_LABEL}=1",
                              self._on_namespace, on_state=self._on_state)
        self.settled = asyncio.Event()  # the namespace watch listed, or was refused

    def start(self) -> ServedNamespace:
        home = self.serve(self.home)
        self._keep(asyncio.create_task(self.watch.run()))
        return home

    async def close(self) -> None:
        for name in list(self._served):
            self.unserve(name)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def get(self, name: str) -> ServedNamespace | None:
        return self._served.get(name)

    def serve(self, name: str) -> ServedNamespace:
        served = self._served.get(name)
        if served is None:
            served = self._served[name] = self._make(name)
            served.start()
        return served

    def unserve(self, name: str) -> None:
        served = self._served.pop(name, None)
        if served is not None:
            for task in served.stop():
                self._keep(task)

    def names(self) -> list[str]:
        """The functions namespace, then the others once their functions were read (or could
        not be): what is listed can be deployed to, or says why not."""
        others = sorted(n for n, s in self._served.items() if n != self.home and s.settled.is_set())
        return [self.home, *others]

    def _on_namespace(self, kind: str, obj: dict[str, Any]) -> None:
        name = key_of(obj)[1]
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if kind != "DELETED" and labels.get(NAMESPACE_LABEL) == "1":
            self.serve(name)
        elif name != self.home:
            self.unserve(name)

    def _on_state(self, informer: Informer) -> None:
        if informer.refused:
            log.warning("cannot watch namespaces (%s): only the functions namespace %r is served; grant the gateway "
                        "get/list/watch on namespaces to serve those labelled %s=1 too; retrying",
                        informer.error, self.home, NAMESPACE_LABEL)
        elif informer.error:
            log.warning("watching namespaces: %s; retrying", informer.error)
        if informer.synced.is_set() or informer.refused:
            self.settled.set()
