"""The certifier's scaling tests (tests/scaling_test.go at 2e39d05), replayed: the same deploys,
the same load (hey: 2 workers, 5 requests a second each, no keep-alive, 10 s timeout, POST
without a body) and the same expectations, against a real gateway.

The certifier deploys ``functions/alpine:latest`` with ``fprocess=sha512sum``; a local image in
``mode: serializing`` stands in for it (as in test_certifier_logs.py). Its functions set no
``com.openfaas.scale.type``, and its load is 10 short requests a second, about 0 in flight: the
default ``capacity`` type rightly sees no load there. So the certifier runs against a gateway
started with ``--scale-default-type rps --scale-default-target 5`` (OpenFaaS CE's alert fires
past 5 requests a second), a short ``--scale-default-zero-duration`` (it waits 2 minutes for
the idler), and windows short enough for its 1-minute cooldown; here shorter still.

What the replay shortens: hey's 1000 requests (100 s) become the few seconds each test needs.
Test_ScaleToZero waits for ``minReplicaCount(0)``, which is true at once, so as written it reads
0 replicas a moment after it read 2; the replay waits for 0 within its 2 minutes, as meant.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from go_wire import DEFAULT_NAMESPACE, DEPLOY_OK
from platform_fixture import Platform, wait_for

FLAGS = ("--scale-default-type", "rps", "--scale-default-target", "5", "--scale-default-zero-duration", "3s",
         "--autoscale-interval", "250ms", "--autoscale-stable-window", "5s", "--autoscale-panic-window", "1s")
MIN, MAX, ZERO = "com.openfaas.scale.min", "com.openfaas.scale.max", "com.openfaas.scale.zero"


@pytest.fixture(scope="module")
def certified(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = Platform(tmp_path_factory.mktemp("state"), FLAGS).start()
    try:
        yield p
    finally:
        p.close()


def deploy(p: Platform, tmp_path: Path, name: str, labels: dict[str, str]) -> None:
    """The certifier's deploy: functions/alpine:latest, fprocess sha512sum, its labels."""
    (tmp_path / name).mkdir()
    p.images.build(f"{name}:latest", "python3-flask", tmp_path / name)
    body = {"service": name, "image": f"{name}:latest", "network": "func_functions", "envProcess": "sha512sum",
            "labels": labels, "namespace": DEFAULT_NAMESPACE, "envVars": {"mode": "serializing"}}
    r = p.http.post(f"{p.url}/system/functions", json=body)
    assert r.status_code in DEPLOY_OK, r.text


def remove(p: Platform, name: str) -> None:
    p.http.request("DELETE", f"{p.url}/system/functions", json={"functionName": name, "namespace": DEFAULT_NAMESPACE})


def replicas(p: Platform, name: str) -> int:
    return int(p.status(name)["replicas"])


class Hey:
    """hey's requester.Work as the certifier sets it up: C workers, each at most QPS requests a
    second, N requests in all, a new connection each, until done or stopped."""

    def __init__(self, url: str, *, n: int, c: int = 2, qps: float = 5.0) -> None:
        self.codes: list[int | str] = []
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._work, args=(url, n // c, 1 / qps), daemon=True) for _ in range(c)]

    def _work(self, url: str, n: int, every: float) -> None:
        for _ in range(n):
            if self._stop.wait(every):  # hey's per-worker throttle ticks every 1/QPS
                return
            try:
                self.codes.append(httpx.post(url, headers={"Connection": "close"}, timeout=10).status_code)
            except httpx.HTTPError as exc:
                self.codes.append(type(exc).__name__)

    def start(self) -> Hey:
        for w in self._workers:
            w.start()
        return self

    def run(self) -> Hey:
        self.start()
        return self.wait()

    def stop(self) -> None:
        self._stop.set()
        self.wait()

    def wait(self) -> Hey:
        for w in self._workers:
            w.join(120)
        return self


def test_scale_minimum(certified: Platform, tmp_path: Path) -> None:
    name = "test-min-scale"
    deploy(certified, tmp_path, name, {MIN: "2"})
    try:
        assert replicas(certified, name) == 2
    finally:
        remove(certified, name)


def test_scale_from_zero_during_invoke(certified: Platform, tmp_path: Path) -> None:
    name = "test-scale-from-zero"
    deploy(certified, tmp_path, name, {})
    try:
        wait_for(lambda: certified.status(name)["availableReplicas"] >= 1, 60, what="a ready replica")
        r = certified.http.post(f"{certified.url}/system/scale-function/{name}",
                                json={"serviceName": name, "namespace": DEFAULT_NAMESPACE, "replicas": 0})
        assert r.status_code in DEPLOY_OK, r.text
        assert replicas(certified, name) == 0
        r = httpx.post(certified.function_url(name), timeout=60)
        assert r.status_code == 200, r.text
    finally:
        remove(certified, name)


def test_scale_up_and_down_from_throughput(certified: Platform, tmp_path: Path) -> None:
    name = "test-throughput-scaling"
    deploy(certified, tmp_path, name, {MIN: "1", MAX: "2"})
    try:
        load = Hey(certified.function_url(name), n=1000).start()
        try:
            wait_for(lambda: replicas(certified, name) >= 2, 60, interval=1.0, what="max scale (2)")
        finally:
            load.stop()
        assert replicas(certified, name) == 2
        wait_for(lambda: replicas(certified, name) <= 1, 60, interval=1.0, what="cooldown to min (1)")
        assert replicas(certified, name) == 1
        assert set(load.codes) == {200}, load.codes
    finally:
        remove(certified, name)


def test_scaling_disabled_via_labels(certified: Platform, tmp_path: Path) -> None:
    name = "test-scaling-disabled"
    deploy(certified, tmp_path, name, {MIN: "2", MAX: "2"})
    try:
        load = Hey(certified.function_url(name), n=60).run()
        assert set(load.codes) == {200}, load.codes
        assert replicas(certified, name) == 2
    finally:
        remove(certified, name)


def test_scale_to_zero(certified: Platform, tmp_path: Path) -> None:
    name = "test-scaling-to-zero"
    deploy(certified, tmp_path, name, {MAX: "2", ZERO: "true"})
    try:
        load = Hey(certified.function_url(name), n=60).run()
        assert set(load.codes) == {200}, load.codes
        assert replicas(certified, name) == 2
        wait_for(lambda: replicas(certified, name) == 0, 120, interval=1.0, what="the idler's scale to zero")
    finally:
        remove(certified, name)
