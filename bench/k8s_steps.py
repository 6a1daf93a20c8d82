"""When each step of a new pod happened, for bench_k8s.py: seen by watches of Pods and Endpoints
(the provider's own informer, so about when the gateway saw it), the container's first process
(``/proc`` on the host) and its watchdog's log lines (stamped by the container runtime).

All times are ``time.monotonic()`` seconds: ``CLOCK_MONOTONIC`` is system-wide on Linux and the
pods run on this machine, so they compare with the client's clock.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import time
from typing import Any

from benchlib import environ, started_s
from streamfaas.provider.kubernetes._api import KubeClient
from streamfaas.provider.kubernetes._watch import Informer

# A new pod's steps, in their usual order: seen by the watches (created, scheduled, running:
# the kubelet's status update after the container started, which brings the pod IP; ready: its
# readiness probe passed; in_endpoints), the container's first process and its watchdog's log
# lines (listening, then the function ready).
POD_STEPS = (
    "created",
    "scheduled",
    "process_started",
    "watchdog_listening",
    "function_ready",
    "running",
    "ready",
    "in_endpoints",
)
LOG_STEPS = {
    "watchdog_listening": " watchdog: watchdog listening on ",
    "function_ready": " ready at ",
}


def offsets(steps: dict[str, float], t0: float, keys: tuple[str, ...]) -> dict[str, float]:
    """The steps' times as ms after ``t0``, those of ``keys`` that happened."""
    return {k: round((steps[k] - t0) * 1000, 1) for k in keys if k in steps}


class PodTimeline:
    """When this process saw each pod of the namespace reach each step (monotonic s)."""

    def __init__(self, client: KubeClient, namespace: str) -> None:
        self.client, self.namespace = client, namespace
        pods = functools.partial(client.core.list_namespaced_pod, namespace)
        eps = functools.partial(client.core.list_namespaced_endpoints, namespace)
        self.informers = [
            Informer(client, "pods", pods, "faas_function", self._on_pod),
            Informer(client, "endpoints", eps, "faas_function", self._on_endpoints),
        ]
        self.steps: dict[str, dict[str, float]] = {}  # pod names are never reused
        self.function: dict[str, str] = {}
        self.ip: dict[str, str] = {}

    def _on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        steps = self.steps.setdefault(meta["name"], {"created": now})
        self.function[meta["name"]] = (meta.get("labels") or {}).get("faas_function", "")
        if status.get("podIP"):
            self.ip[meta["name"]] = status["podIP"]
        containers = status.get("containerStatuses") or []
        conditions = status.get("conditions") or []
        reached = {
            "scheduled": bool(spec.get("nodeName")),
            "running": any("running" in (c.get("state") or {}) for c in containers),
            "ready": any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
            ),
            "terminating": bool(meta.get("deletionTimestamp")),
            "deleted": kind == "DELETED",
        }
        for name in (k for k, done in reached.items() if done):
            steps.setdefault(name, now)

    def _on_endpoints(self, kind: str, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        for subset in obj.get("subsets") or []:
            for address in subset.get("addresses") or []:  # ready addresses only
                pod = (address.get("targetRef") or {}).get("name")
                if pod in self.steps:
                    self.steps[pod].setdefault("in_endpoints", now)

    def pods(self, fn: str, *, live: bool = True) -> list[str]:
        steps = self.steps
        return [
            p
            for p, f in self.function.items()
            if f == fn and not (live and "terminating" in steps[p])
        ]

    def gone(self, fn: str) -> bool:
        return all("deleted" in self.steps[p] for p in self.pods(fn, live=False))

    async def inside(self, pod: str) -> None:
        """Add when the pod's first process started and its watchdog's log lines were written,
        both read back (as monotonic s) while the pod runs."""
        steps, fn = self.steps[pod], self.function[pod]
        boot_to_mono = time.monotonic() - time.clock_gettime(time.CLOCK_BOOTTIME)
        ours = [
            p
            for p in map(int, filter(str.isdigit, os.listdir("/proc")))
            if {("HOSTNAME", pod), ("STREAMFAAS_FUNCTION", fn)} <= environ(p).items()
        ]  # the container's processes (not the pod's pause process, which has neither)
        if ours:
            steps["process_started"] = min(map(started_s, ours)) + boot_to_mono
        log = await self.client.core.read_namespaced_pod_log(
            pod, self.namespace, timestamps=True, _request_timeout=30
        )
        wall_to_mono = time.monotonic() - time.time()
        for stamp, _, text in (line.partition(" ") for line in log.splitlines()):
            for step_name, marker in LOG_STEPS.items():
                if marker in text:
                    steps.setdefault(
                        step_name, dt.datetime.fromisoformat(stamp).timestamp() + wall_to_mono
                    )
