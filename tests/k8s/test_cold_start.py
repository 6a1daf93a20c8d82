"""A request that wakes a function is served as soon as the new pod's watchdog answers the
gateway's own readiness probe, not when the kubelet reports the pod Ready (_activator.py).

The first tests need no cluster: which pods may be probed, how a probed pod hands over to its
Endpoints, and that the activator's probe tasks end with the requests that wait (a real
aiohttp server on 127.0.0.1 stands in for the pod's watchdog). The last one runs on the test
cluster (skipped outside CI without it): with the kubelet's readiness probe held off for an hour, a woken function is still
served, by its new pod, which its Endpoints list as not ready.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

pytest.importorskip("kubernetes_asyncio", reason="the kubernetes extra is not installed (pip install -e '.[kubernetes]')")

from k8s_fixture import CI, ENV_FILE, K8sEnv, K8sGateway, Kubectl  # noqa: E402

from platform_fixture import REPO, streamfaas_cmd, wait_for  # noqa: E402
from streamfaas.provider.kubernetes._activator import Activator, current_replicaset, serving_url  # noqa: E402
from streamfaas.provider.kubernetes._endpoints import EndpointTable  # noqa: E402

KEY = ("ns", "fn")
BASE_IMAGE = "localhost/streamfaas-pybase:bookworm"
PROBE = Path(__file__).resolve().parent / "functions" / "probe"


def _deployment(generation: int = 2, observed: int = 2, message: str = 'ReplicaSet "fn-new" is progressing.') -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "fn", "generation": generation},
        "status": {"observedGeneration": observed, "conditions": [
            {"type": "Available", "status": "False", "message": "Deployment does not have minimum availability."},
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated", "message": message},
        ]},
    }


def _pod(name: str, replicaset: str, *, ip: str = "10.244.0.9", port: int = 8080, function: str = "fn",
         terminating: bool = False, waiting: str = "") -> dict[str, Any]:
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    meta: dict[str, Any] = {
        "namespace": "ns", "name": name, "labels": {"faas_function": function},
        "ownerReferences": [{"kind": "ReplicaSet", "name": replicaset, "controller": True}],
    }
    if terminating:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": function, "ports": [{"name": "http", "containerPort": port}]}]},
        "status": {"phase": "Pending" if waiting else "Running", "podIP": ip, "containerStatuses": [{"state": state}]},
    }


def _endpoints(ready: tuple[str, str] | None = None, not_ready: tuple[str, str] | None = None, port: int = 8080) -> dict[str, Any]:
    def address(pod: tuple[str, str]) -> dict[str, Any]:
        return {"ip": pod[1], "targetRef": {"kind": "Pod", "name": pod[0]}}

    subset = {"addresses": [address(ready)] if ready else [], "notReadyAddresses": [address(not_ready)] if not_ready else [],
              "ports": [{"name": "http", "port": port}]}
    return {"metadata": {"namespace": "ns", "name": "fn"}, "subsets": [subset]}


# ---- which pods: the current version's, alive, with an address -----------------------------------
def test_the_current_replicaset_is_known_only_once_the_controller_saw_the_latest_spec() -> None:
    assert current_replicaset(_deployment()) == "fn-new"
    assert current_replicaset(_deployment(message='Created new replica set "fn-new"')) == "fn-new"
    assert current_replicaset(_deployment(generation=3, observed=2)) == ""  # may still name the version before
    assert current_replicaset(_deployment(message='ReplicaSet "other-1" is progressing.')) == ""
    assert current_replicaset(None) == ""


def test_only_live_pods_of_the_current_replicaset_with_an_address_are_probed() -> None:
    assert serving_url(_pod("fn-new-a", "fn-new"), "fn", "fn-new") == "http://10.244.0.9:8080"
    assert serving_url(_pod("fn-old-a", "fn-old"), "fn", "fn-new") is None  # an old version being replaced
    assert serving_url(_pod("fn-new-a", "fn-new", terminating=True), "fn", "fn-new") is None
    assert serving_url(_pod("fn-new-a", "fn-new", ip=""), "fn", "fn-new") is None
    assert serving_url(_pod("fn-new-a", "fn-new", waiting="ImagePullBackOff"), "fn", "fn-new") is None
    assert serving_url(_pod("fn-new-a", "fn-new", function="other"), "fn", "fn-new") is None
    assert serving_url(_pod("fn-new-a", "fn-new"), "fn", "") is None  # version not known: Endpoints only


# ---- a probed pod and its Endpoints ---------------------------------------------------------------
async def test_a_probed_pod_is_picked_until_its_endpoints_list_it_and_keeps_its_count() -> None:
    async with aiohttp.ClientSession() as session:
        table = EndpointTable(session)
        probed = table.add_probed(KEY, "fn-new-a", "http://10.244.0.9:8080", time.monotonic() + 60)
        assert table.pick(KEY) is probed
        probed.inflight += 1
        table.update(_endpoints(not_ready=("fn-new-a", "10.244.0.9")))  # the kubelet has not said Ready yet
        assert table.pick(KEY) is probed and table.ready(KEY) == []
        table.update(_endpoints(ready=("fn-new-a", "10.244.0.9")))
        # Listed ready: the same object, its open request still counted, no longer only probed.
        assert table.ready(KEY) == [probed] and probed.inflight == 1
        assert table.probed(KEY) == {} and probed.probed_until == 0.0
        table.add_probed(KEY, "fn-new-b", "http://10.244.0.10:8080", time.monotonic() - 1)
        table.update(_endpoints())
        assert table.pick(KEY) is None  # a probe that no longer vouches for its pod is not used


# ---- the probes: a real server for the watchdog ----------------------------------------------------
class Watchdog:
    """``/_/ready`` on 127.0.0.1: 503 until ``ready`` is set; counts the probes."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.probes = 0
        self.probed = asyncio.Event()  # set at each probe
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.probes += 1
        self.probed.set()
        return web.Response(status=200 if self.ready.is_set() else 503, text="ready")


@pytest.fixture
async def watchdogs() -> AsyncIterator[Callable[[], Any]]:
    runners: list[web.AppRunner] = []

    async def start() -> Watchdog:
        dog = Watchdog()
        app = web.Application()
        app.router.add_get("/_/ready", dog.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        dog.port = runner.addresses[0][1]
        return dog

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


async def _until(done: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)  # a poll with a deadline


async def test_a_waiting_request_gets_the_new_pod_when_it_answers_and_no_probe_outlives_it(watchdogs: Callable[[], Any]) -> None:
    new, old = await watchdogs(), await watchdogs()
    pods = [_pod("fn-new-a", "fn-new", ip="127.0.0.1", port=new.port), _pod("fn-old-a", "fn-old", ip="127.0.0.1", port=old.port)]
    woke = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        table = EndpointTable(session)
        activator = Activator(table, pods=lambda key: pods, deployment=lambda key: _deployment(),
                              notify=lambda key: woke.set(), timeout=30)
        try:
            with activator.waiting(KEY):
                activator.refresh(KEY)
                assert activator.probing() == 1  # the new pod only
                await asyncio.wait_for(new.probed.wait(), 10)
                new.probed.clear()
                await asyncio.wait_for(new.probed.wait(), 10)  # answered 503 and probed again
                assert table.pick(KEY) is None and not woke.is_set()
                new.ready.set()
                await asyncio.wait_for(woke.wait(), 10)
                endpoint = table.pick(KEY)
                assert endpoint is not None and (endpoint.id, endpoint.url) == ("fn-new-a", f"http://127.0.0.1:{new.port}")
            await _until(lambda: activator.probing() == 0, "the probe tasks to end")
            assert old.probes == 0  # the old version's pod is never probed
            # The pod goes away: it is no longer handed out.
            activator.on_pod("MODIFIED", _pod("fn-new-a", "fn-new", ip="127.0.0.1", port=new.port, terminating=True))
            assert table.pick(KEY) is None
        finally:
            await activator.close()
        assert activator.probing() == 0


async def test_probes_stop_when_no_request_waits_any_more(watchdogs: Callable[[], Any]) -> None:
    dog = await watchdogs()
    pods = [_pod("fn-new-a", "fn-new", ip="127.0.0.1", port=dog.port)]
    async with aiohttp.ClientSession() as session:
        table = EndpointTable(session)
        activator = Activator(table, pods=lambda key: pods, deployment=lambda key: _deployment(),
                              notify=lambda key: None, timeout=30)
        try:
            with activator.waiting(KEY), activator.waiting(KEY):  # two requests wait
                activator.refresh(KEY)
                await asyncio.wait_for(dog.probed.wait(), 10)
            # Both gave up (a timeout, a client gone): the probe is cancelled, and ends.
            await _until(lambda: activator.probing() == 0, "the cancelled probe to end")
            with activator.waiting(KEY):
                table.update(_endpoints(ready=("fn-new-a", "127.0.0.1"), port=dog.port))
                activator.refresh(KEY)
                assert activator.probing() == 0  # listed ready: the Endpoints route, nothing is probed
        finally:
            await activator.close()


# ---- on the cluster --------------------------------------------------------------------------------
# Outside CI, no cluster skips these (with one line why); under CI they run and fail without it.
needs_cluster = pytest.mark.skipif(not (CI or ENV_FILE.is_file()), reason=f"no test Kubernetes cluster ({ENV_FILE} missing; scripts/k8s-cluster.sh up)")


@pytest.fixture(scope="module")
def probe_image(k8s_gateway_factory: Callable[..., K8sGateway], k8s_env: K8sEnv,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[K8sGateway, str]]:
    gw = k8s_gateway_factory("--cold-start-timeout", "60s")
    done = subprocess.run(["bash", str(REPO / "scripts" / "oci-base-image.sh")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path_factory.mktemp("cold-probe")
    shutil.copytree(PROBE, folder / "probe")
    tag = uuid.uuid4().hex[:8]
    (folder / "stack.yaml").write_text(
        f"version: 1.0\nfunctions:\n  sf-cold:\n    lang: python3-flask\n    handler: ./probe\n    image: sf-cold:{tag}\n")
    done = subprocess.run(streamfaas_cmd("publish", "-f", str(folder / "stack.yaml"), "--registry", k8s_env.registry,
                                         "--base-image", BASE_IMAGE), capture_output=True, text=True, env=gw.env(),
                          stdin=subprocess.DEVNULL, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    image = f"{k8s_env.registry}/sf-cold:{tag}"
    try:
        yield gw, image
    finally:
        subprocess.run(["buildah", "rmi", f"sf-cold:{tag}"], capture_output=True, check=False)


@needs_cluster
@pytest.mark.k8s
@pytest.mark.timeout(420)  # the first build and push of the image is part of it
def test_a_woken_function_is_served_by_its_new_pod_before_the_kubelet_calls_it_ready(
        probe_image: tuple[K8sGateway, str], kubectl: Kubectl) -> None:
    gw, image = probe_image
    ns, name = gw.namespace, "waker"
    gw.deploy_image(name, image, envVars={"drain_timeout": "1s"})  # its pod goes in seconds
    gw.wait_ready(name, timeout=180)
    r = gw.http.post(f"{gw.url}/system/scale-function/{name}", json={"serviceName": name, "replicas": 0})
    assert r.status_code in (200, 202), r.text
    wait_for(lambda: not kubectl.get("pods", namespace=ns, selector=f"faas_function={name}")["items"], 90,
             what=f"{name}'s pods to go")
    # From here the kubelet would call a new pod Ready only after an hour: only the gateway's
    # own probe can find it ready. (A new template: its pods belong to a new ReplicaSet.)
    patch = [{"op": "add", "path": "/spec/template/spec/containers/0/readinessProbe/initialDelaySeconds", "value": 3600}]
    kubectl.run("patch", "deployment", name, "-n", ns, "--type=json", "-p", json.dumps(patch))
    woke = httpx.get(f"{gw.function_url(name)}/whoami", timeout=90)
    assert woke.status_code == 200, woke.text
    pod = json.loads(woke.text)["pod"]
    assert woke.headers["X-Served-By"] == f"{name}[{pod}]"
    obj = kubectl.get("pod", pod, namespace=ns)
    assert [c["status"] for c in obj["status"]["conditions"] if c["type"] == "Ready"] == ["False"]
    owner = obj["metadata"]["ownerReferences"][0]["name"]
    assert current_replicaset(kubectl.get("deployment", name, namespace=ns)) == owner  # the new version's pod
    subsets = kubectl.get("endpoints", name, namespace=ns).get("subsets") or []
    assert all(a.get("targetRef", {}).get("name") != pod for s in subsets for a in s.get("addresses") or [])
