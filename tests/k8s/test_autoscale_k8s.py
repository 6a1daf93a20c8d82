"""Autoscaling on the Kubernetes provider (issue #13), on the test cluster: real gateways,
real pods of a python3-flask function (tests/k8s/functions/probe), real SSE streams.

- A burst of 200 streams at a function with ``threads: 16``, target 16 and max 20 is decided
  at once (the Deployment asks for >= 10 replicas within 2 s) and served: every stream
  completes, on >= 10 pods. On this 2-core machine a real kubelet starts ~14 Python pods in
  parallel (5-7 s here, 18 s on CI late in the suite), so *ready* replicas are asserted within ``READY_BOUND`` and the times printed.
- Then the burst ends with long streams open on most pods, and the function goes back to its
  minimum: the pods removed drain (SIGTERM, the watchdog's ``drain_timeout``) and every one of
  those streams gets its final event.
- Two gateways: exactly one leader (the Lease), and streams only through the other one scale
  the function, decided by the leader on the summed load.
- Failover: the leader killed (SIGKILL, no release), the other takes over within the lease's
  duration plus one retry.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from k8s_fixture import K8sEnv, K8sGateway, Kubectl, require_cluster
from prometheus_client.parser import text_string_to_metric_families

from platform_fixture import REPO, streamfaas_cmd, wait_for

require_cluster()
pytest.importorskip("kubernetes_asyncio", reason="the kubernetes extra is not installed (pip install -e '.[kubernetes]')")
sys.path.insert(0, str(REPO / "tests" / "autoscale"))

from streams import Stream, Streams  # noqa: E402

from streamfaas.provider.kubernetes._lease import LEADER_LEASE, LEASE_SECONDS, RENEW_EVERY  # noqa: E402

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(300)]

# Short windows, so each test takes seconds: 4 looks a second, a 5 s stable window.
FLAGS = ("--autoscale-interval", "250ms", "--autoscale-stable-window", "5s", "--autoscale-panic-window", "1s",
         "--cold-start-timeout", "90s")
TARGET, PROPORTION = "com.openfaas.scale.target", "com.openfaas.scale.target-proportion"
MIN, MAX = "com.openfaas.scale.min", "com.openfaas.scale.max"
BASE_IMAGE = "localhost/streamfaas-pybase:bookworm"
PROBE = Path(__file__).resolve().parent / "functions" / "probe"
DONE = "event: done"  # the probe's final event: a stream that shows it was not cut
# Ready replicas after a burst: the decision is immediate (0.1-0.3 s), but ~14 Python pods
# starting at once on 2 cores under a real kubelet take time: >= 10 were ready at 5.3-6.8 s here
# (2026-12-02, printed by the test; 14 s before the kubelet's API limits were raised, see
# scripts/k8s-cluster.sh), and at 18.4 s on CI's machine (2026-12-03, late in a 30-minute suite).
# How fast a kubelet starts pods is the machine's, not the autoscaler's: the autoscaler's part,
# the decision, is held to 2 s below; the bound for ready pods only catches pods that never come.
READY_BOUND = 40.0


def _final(s: Stream) -> bool:
    return s.status == 200 and bool(s.events) and s.events[-1].startswith(DONE)


@pytest.fixture(scope="module")
def probe_image(k8s_env: K8sEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    done = subprocess.run(["bash", str(REPO / "scripts" / "oci-base-image.sh")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path_factory.mktemp("autoscale-probe")
    shutil.copytree(PROBE, folder / "probe")
    tag = uuid.uuid4().hex[:8]
    (folder / "stack.yaml").write_text(
        f"version: 1.0\nfunctions:\n  sf-scale:\n    lang: python3-flask\n    handler: ./probe\n    image: sf-scale:{tag}\n")
    done = subprocess.run(streamfaas_cmd("publish", "-f", str(folder / "stack.yaml"), "--registry", k8s_env.registry,
                                         "--base-image", BASE_IMAGE), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    try:
        yield f"{k8s_env.registry}/sf-scale:{tag}"
    finally:
        subprocess.run(["buildah", "rmi", f"sf-scale:{tag}"], capture_output=True, check=False)


@pytest.fixture(scope="module")
def gateways(k8s_gateway_factory: Callable[..., K8sGateway]) -> list[K8sGateway]:
    """The module's gateways, first one only (the leader); a test that needs two starts the second."""
    return [k8s_gateway_factory(*FLAGS)]


@pytest.fixture
def streams() -> Iterator[Streams]:
    s = Streams()
    try:
        yield s
    finally:
        s.close()


def metrics(gw: K8sGateway) -> dict[str, list[tuple[dict[str, str], float]]]:
    r = gw.http.get(f"{gw.url}/metrics")
    r.raise_for_status()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def leadership(gw: K8sGateway) -> tuple[str, bool]:
    """(the gateway's identity in the Leases, whether it is the leader now)."""
    [(labels, value)] = metrics(gw)["streamfaas_autoscaler_leader"]
    return labels["identity"], value == 1.0


def decisions(gw: K8sGateway, direction: str) -> float:
    return sum(v for labels, v in metrics(gw).get("streamfaas_autoscaler_decisions_total", []) if labels["direction"] == direction)


def lease_holder(kubectl: Kubectl, namespace: str) -> str:
    lease = kubectl.get("lease", LEADER_LEASE, namespace=namespace)
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


class ReplicaWatch:
    """Polls the Deployment's replicas (wanted) and the gateway's ready count in a thread."""

    def __init__(self, gw: K8sGateway, name: str) -> None:
        self.samples: list[tuple[float, int, int]] = []  # (time, replicas wanted, available)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(gw, name), daemon=True)
        self._thread.start()

    def _poll(self, gw: K8sGateway, name: str) -> None:
        while not self._stop.is_set():
            s = gw.status(name)
            self.samples.append((time.monotonic(), s["replicas"], s["availableReplicas"]))
            self._stop.wait(0.1)

    def first(self, at_least: int, *, ready: bool = False) -> float | None:
        return next((t for t, wanted, available in self.samples if (available if ready else wanted) >= at_least), None)

    def first_down_to(self, replicas: int, after: float) -> float | None:
        return next((t for t, wanted, _ in self.samples if t > after and wanted <= replicas), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def live_pods(kubectl: Kubectl, namespace: str, name: str) -> set[str]:
    pods = kubectl.get("pods", namespace=namespace, selector=f"faas_function={name}")["items"]
    return {p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")}


def test_a_burst_scales_out_and_back_to_min_without_cutting_a_stream(
        gateways: list[K8sGateway], probe_image: str, streams: Streams, kubectl: Kubectl) -> None:
    gw, name = gateways[0], "burst"
    wait_for(lambda: leadership(gw)[1], 20, interval=0.1, what="the only gateway to lead")
    gw.deploy_image(name, probe_image, envVars={"threads": "16", "drain_timeout": "60s"}, labels={TARGET: "16", MAX: "20"})
    gw.wait_ready(name, timeout=120)
    watch = ReplicaWatch(gw, name)
    try:
        began = time.monotonic()
        burst = [streams.open(f"{gw.function_url(name)}?gate=0&n=60") for _ in range(200)]  # 3 s each
        wait_for(lambda: all(s.ended for s in burst), 150, interval=0.1, what="every stream of the burst to end")
        ended = time.monotonic()
        # Long streams (12 s), one per pod or so, open while the function scales back down.
        long = [streams.open(f"{gw.function_url(name)}?gate=0&n=240") for _ in range(12)]
        wait_for(lambda: all(s.first_byte or s.ended for s in long), 30, what="the long streams' first events")
        assert all(s.first_byte for s in long), [(s.status, s.served_by, s.error, s.events[-1:]) for s in long]
        wait_for(lambda: watch.first_down_to(1, ended) is not None, 60, interval=0.1, what="replicas back to min")
        down = watch.first_down_to(1, ended)
        survivors = wait_for(lambda: len(pods := live_pods(kubectl, gw.namespace, name)) == 1 and pods, 30,
                             interval=0.2, what="one pod left")
        streams.wait(timeout=60)
    finally:
        watch.stop()
    decided, ten = watch.first(10), watch.first(10, ready=True)
    firsts = sorted(s.first_byte - began for s in burst if s.first_byte is not None)
    print(f"\nburst: >=10 replicas wanted at {decided and decided - began:.2f}s, >=10 ready at {ten and ten - began:.2f}s;"
          f" first byte of the 17th stream {firsts[16]:.2f}s, of the last {firsts[-1]:.2f}s; all ended at {ended - began:.2f}s;"
          f" back to 1 replica {down and down - ended:.2f}s after")
    assert decided is not None and decided - began <= 2.0, f"no scale-out to >= 10 decided within 2 s ({decided and decided - began})"
    assert ten is not None and ten - began <= READY_BOUND, f"not 10 replicas ready within {READY_BOUND} s ({ten and ten - began})"
    assert [s for s in burst if not _final(s)] == []
    # The new pods took streams as they came. (Not all >= 10: here the backlog is mostly served
    # by the time the 10th pod is ready.)
    assert len({s.served_by for s in burst}) >= 5, {s.served_by for s in burst}
    # Scale-down cut nothing: every long stream ended with its final event, those on the pods
    # taken away included (they drained: SIGTERM, then the watchdog waits for its streams).
    assert [s for s in long if not _final(s)] == []
    drained = [s for s in long if s.served_by != f"{name}[{next(iter(survivors))}]" and s.ended and down and s.ended > down]
    assert drained, [(s.served_by, s.ended) for s in long]
    view = gw.http.get(f"{gw.url}/system/function/{name}/scaling").json()
    assert view["replicas"] == 1 and view["waiting"] == 0, view
    assert decisions(gw, "up") >= 1 and decisions(gw, "down") >= 1


def test_streams_through_one_gateway_scale_the_function_by_the_leaders_decision(
        gateways: list[K8sGateway], k8s_gateway_factory: Callable[..., K8sGateway], probe_image: str,
        streams: Streams, kubectl: Kubectl) -> None:
    leader = gateways[0]
    follower = k8s_gateway_factory(*FLAGS)
    gateways.append(follower)
    wait_for(lambda: leadership(leader)[1], 20, interval=0.1, what="the first gateway to lead")
    assert leadership(follower)[1] is False
    assert lease_holder(kubectl, leader.namespace) == leadership(leader)[0]
    # The leader sums both gateways' loads (the follower's from its Lease).
    wait_for(lambda: metrics(leader)["streamfaas_autoscaler_gateways"][0][1] == 2, 20, interval=0.1,
             what="the leader to see the follower's load")
    name = "spread"
    follower.deploy_image(name, probe_image, envVars={"threads": "8", "drain_timeout": "60s"},
                          labels={TARGET: "4", PROPORTION: "1", MAX: "5"})
    follower.wait_ready(name, timeout=120)
    began = time.monotonic()
    opened = [streams.open(f"{follower.function_url(name)}?gate=0&n=160") for _ in range(16)]  # 8 s each
    # 16 open, 4 a replica: 4 replicas, though the leader itself has nothing open.
    wait_for(lambda: follower.status(name)["replicas"] >= 4, 10, interval=0.1, what="the scale-out")
    print(f"\nscale-out decided by the leader {time.monotonic() - began:.2f}s after the streams opened")
    # The load the leader sized it on is the follower's 16 streams; its own count ("inflight",
    # this gateway's) is 0.
    view = wait_for(lambda: (v := leader.http.get(f"{leader.url}/system/function/{name}/scaling").json())["load"] == 16 and v,
                    10, interval=0.1, what="the leader's view of the follower's streams")
    assert view["inflight"] == 0 and view["desiredReplicas"] >= 4, view
    streams.wait(timeout=90)
    assert [s for s in opened if not _final(s)] == []
    assert decisions(leader, "up") >= 1 and decisions(follower, "up") == 0  # only the leader decides
    assert leadership(follower)[1] is False


def test_when_the_leader_dies_the_other_gateway_takes_over_within_the_lease(
        gateways: list[K8sGateway], k8s_gateway_factory: Callable[..., K8sGateway], kubectl: Kubectl) -> None:
    if len(gateways) < 2:
        gateways.append(k8s_gateway_factory(*FLAGS))
    leaders = wait_for(lambda: [g for g in gateways if leadership(g)[1]], 20, interval=0.1, what="a leader")
    assert len(leaders) == 1, "more than one gateway leads"
    old = leaders[0]
    new = next(g for g in gateways if g is not old)
    new_identity = leadership(new)[0]
    killed = time.monotonic()
    old.stop(signal.SIGKILL)  # no release: the other must wait the lease out
    gateways.remove(old)
    wait_for(lambda: leadership(new)[1], LEASE_SECONDS + 2 * RENEW_EVERY + 5, interval=0.1, what="the takeover")
    took = time.monotonic() - killed
    print(f"\ntakeover {took:.2f}s after the leader was killed (lease {LEASE_SECONDS}s, retry {RENEW_EVERY}s)")
    # Its last sight of the Lease changing was at most one retry before the kill; it takes over
    # at its first try past the lease's duration from then (+ slack for a loaded machine).
    assert took <= LEASE_SECONDS + RENEW_EVERY + 2.0
    assert lease_holder(kubectl, new.namespace) == new_identity
