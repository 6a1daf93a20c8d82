"""Functions on the real test cluster: OCI images built here and pushed to its loopback
registry, pods started by its kubelet, streams proxied by the gateway straight to pod
addresses. One probe image serves every test (tests/k8s/functions/probe)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from k8s_fixture import K8sEnv, K8sGateway, Kubectl, require_cluster

from platform_fixture import REPO, streamfaas_cmd, wait_for

require_cluster()
pytestmark = pytest.mark.k8s

BASE_IMAGE = "localhost/streamfaas-pybase:bookworm"
PROBE = Path(__file__).resolve().parent / "functions" / "probe"


def _cli(gw: K8sGateway, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(streamfaas_cmd(*args), capture_output=True, text=True, env=gw.env(),
                          stdin=subprocess.DEVNULL, timeout=timeout)


@pytest.fixture(scope="module")
def base_image() -> str:
    done = subprocess.run(["bash", str(REPO / "scripts" / "oci-base-image.sh")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return BASE_IMAGE


@pytest.fixture(scope="module")
def gw(k8s_gateway_factory: Callable[..., K8sGateway]) -> K8sGateway:
    return k8s_gateway_factory("--cold-start-timeout", "60s")


@pytest.fixture(scope="module")
def probe_image(gw: K8sGateway, k8s_env: K8sEnv, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The probe function, published to the cluster's registry (built once for the module)."""
    folder = tmp_path_factory.mktemp("probe-stack")
    shutil.copytree(PROBE, folder / "probe")
    tag = uuid.uuid4().hex[:8]
    (folder / "stack.yaml").write_text(
        f"version: 1.0\nfunctions:\n  sf-probe:\n    lang: python3-flask\n    handler: ./probe\n    image: sf-probe:{tag}\n"
    )
    done = _cli(gw, "publish", "-f", str(folder / "stack.yaml"), "--registry", k8s_env.registry, "--base-image", base_image)
    assert done.returncode == 0, done.stderr[-3000:]
    return f"{k8s_env.registry}/sf-probe:{tag}"


def _deploy(gw: K8sGateway, name: str, image: str, *, timeout: float = 120, **fields: object) -> None:
    gw.deploy_image(name, image, **fields)
    gw.wait_ready(name, timeout=timeout)


@pytest.fixture(scope="module")
def probe(gw: K8sGateway, probe_image: str) -> str:
    _deploy(gw, "probe", probe_image)
    return "probe"


def _get(gw: K8sGateway, name: str, path: str, /, **params: str) -> httpx.Response:
    return httpx.get(f"{gw.function_url(name)}{path}", params=params, timeout=60)


# ---- deploy and stream --------------------------------------------------------------------------
def test_deploy_makes_a_deployment_and_service_labelled_faas_function(gw: K8sGateway, kubectl: Kubectl, probe: str) -> None:
    dep = kubectl.get("deployment", probe, namespace=gw.namespace)
    svc = kubectl.get("service", probe, namespace=gw.namespace)
    assert dep["metadata"]["labels"]["faas_function"] == probe
    assert svc["spec"]["selector"] == {"faas_function": probe}
    pods = kubectl.get("pods", namespace=gw.namespace, selector=f"faas_function={probe}")["items"]
    assert [p["status"]["phase"] for p in pods] == ["Running"]


def test_stream_reaches_the_client_before_the_function_finishes(gw: K8sGateway, probe: str) -> None:
    key = uuid.uuid4().hex
    with httpx.Client(timeout=60) as client, connect_sse(client, "POST", gw.function_url(probe), params={"id": key}) as es:
        events = es.iter_sse()
        first = next(events)
        # Ordering, not timing: the function will not write more until we release it, so the
        # first event got here unbuffered through gateway → pod.
        assert first.data.startswith("first ")
        assert _get(gw, probe, "/release", id=key).text == "released"
        rest = list(events)
    assert [e.data for e in rest[:-1]] == [str(i) for i in range(5)]
    assert rest[-1].event == "done"


def test_disconnect_runs_the_generators_finally_within_a_second(gw: K8sGateway, probe: str) -> None:
    before = int(_get(gw, probe, "/finallies").text)
    with httpx.Client(timeout=60) as client, connect_sse(
        client, "POST", gw.function_url(probe), params={"gate": "0", "n": "2000"}
    ) as es:
        next(es.iter_sse())
    closed = time.monotonic()
    wait_for(lambda: int(_get(gw, probe, "/finallies").text) > before, 5, what="the generator's finally")
    assert time.monotonic() - closed < 1.0


# ---- secrets ------------------------------------------------------------------------------------
def test_functions_read_only_their_own_secrets(gw: K8sGateway, kubectl: Kubectl, probe_image: str) -> None:
    for name, value in (("secret-a", "value-of-a"), ("secret-b", "value-of-b")):
        r = gw.http.post(f"{gw.url}/system/secrets", json={"name": name, "value": value})
        assert r.status_code == 201, r.text
    _deploy(gw, "reader-a", probe_image, secrets=["secret-a"])
    _deploy(gw, "reader-b", probe_image, secrets=["secret-b"])
    assert _get(gw, "reader-a", "/secret", name="secret-a").text == "value-of-a"
    assert _get(gw, "reader-b", "/secret", name="secret-b").text == "value-of-b"
    assert _get(gw, "reader-a", "/secret", name="secret-b").status_code == 404
    assert _get(gw, "reader-b", "/secret", name="secret-a").status_code == 404
    spec = json.dumps(kubectl.get("deployment", "reader-a", namespace=gw.namespace))
    assert "value-of-a" not in spec  # mounted from a Secret, never inlined
    assert "value-of-a" not in gw.log_path.read_text()


# ---- scaling ------------------------------------------------------------------------------------
def test_scale_to_zero_then_a_request_brings_it_back(gw: K8sGateway, kubectl: Kubectl, probe_image: str) -> None:
    _deploy(gw, "sleepy", probe_image)
    r = gw.http.post(f"{gw.url}/system/scale-function/sleepy", json={"serviceName": "sleepy", "replicas": 0})
    assert r.status_code in (200, 202), r.text
    wait_for(lambda: not kubectl.get("pods", namespace=gw.namespace, selector="faas_function=sleepy")["items"], 60,
             what="sleepy's pods to go")
    assert gw.status("sleepy")["availableReplicas"] == 0
    woke = _get(gw, "sleepy", "/whoami")
    assert woke.status_code == 200, woke.text
    assert json.loads(woke.text)["pod"].startswith("sleepy-")
    assert kubectl.get("deployment", "sleepy", namespace=gw.namespace)["spec"]["replicas"] == 1


def test_min_and_max_labels_are_honoured(gw: K8sGateway, kubectl: Kubectl, probe_image: str) -> None:
    labels = {"com.openfaas.scale.min": "2", "com.openfaas.scale.max": "3"}
    _deploy(gw, "bounded", probe_image, labels=labels)
    assert kubectl.get("deployment", "bounded", namespace=gw.namespace)["spec"]["replicas"] == 2
    gw.wait_ready("bounded", replicas=2, timeout=120)
    r = gw.http.post(f"{gw.url}/system/scale-function/bounded", json={"serviceName": "bounded", "replicas": 10})
    assert r.status_code in (200, 202), r.text
    wait_for(lambda: kubectl.get("deployment", "bounded", namespace=gw.namespace)["spec"]["replicas"] == 3, 30,
             what="bounded to be scaled to its max")


# ---- updates and restarts -----------------------------------------------------------------------
def test_rolling_update_does_not_cut_a_stream_in_flight(gw: K8sGateway, probe_image: str) -> None:
    _deploy(gw, "rolling", probe_image, envVars={"VERSION": "1"})
    received: list[str] = []
    done = threading.Event()

    def read() -> None:
        with httpx.Client(timeout=120) as client, connect_sse(
            client, "POST", gw.function_url("rolling"), params={"gate": "0", "n": "120"}
        ) as es:
            for event in es.iter_sse():
                received.append(event.event if event.event != "message" else event.data)
        done.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        wait_for(lambda: len(received) >= 2, 30, what="the stream to start")
        gw.deploy_image("rolling", probe_image, envVars={"VERSION": "2"})
        wait_for(lambda: json.loads(_get(gw, "rolling", "/whoami").text)["version"] == "2", 120,
                 what="the new version to serve")
        assert not done.is_set() or received[-1] == "done"
        assert done.wait(60)
    finally:
        reader.join(120)
    assert received[-1] == "done"
    assert received[1:-1] == [str(i) for i in range(120)]  # every event, from the old pod


def test_a_restarted_gateway_finds_the_functions_again(k8s_gateway_factory: Callable[..., K8sGateway], gw: K8sGateway,
                                                        probe: str) -> None:
    other = k8s_gateway_factory()
    names = {f["name"] for f in other.http.get(f"{other.url}/system/functions").json()}
    assert probe in names
    assert json.loads(httpx.get(f"{other.function_url(probe)}/whoami", timeout=60).text)["pod"].startswith("probe-")


# ---- logs and removal ---------------------------------------------------------------------------
def test_logs_follow_shows_new_lines_with_their_pod(gw: K8sGateway, probe: str) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    pod = json.loads(_get(gw, probe, "/whoami").text)["pod"]
    found: list[dict[str, str]] = []
    with httpx.Client(timeout=60, auth=gw.http.auth) as client, client.stream(
        "GET", f"{gw.url}/system/logs", params={"name": probe, "follow": "true", "tail": "1"}
    ) as logs:
        assert logs.status_code == 200
        lines = logs.iter_lines()
        assert _get(gw, probe, "/log", line=marker).text == "logged"
        for line in lines:
            entry = json.loads(line)
            if marker in entry["text"]:
                found.append(entry)
                break
    assert found and found[0]["instance"] == pod
    assert found[0]["timestamp"].endswith("Z") or "+" in found[0]["timestamp"]


def test_remove_deletes_every_object_it_created(gw: K8sGateway, kubectl: Kubectl, probe_image: str) -> None:
    r = gw.http.post(f"{gw.url}/system/secrets", json={"name": "gone-secret", "value": "x"})
    assert r.status_code == 201, r.text
    _deploy(gw, "short-lived", probe_image, secrets=["gone-secret"])
    r = gw.http.request("DELETE", f"{gw.url}/system/functions", json={"functionName": "short-lived"})
    assert r.status_code in (200, 202), r.text

    def nothing_left() -> bool:
        return all(
            not kubectl.get(kind, namespace=gw.namespace, selector="faas_function=short-lived")["items"]
            for kind in ("deployments", "services", "replicasets", "pods")
        )

    wait_for(nothing_left, 60, what="short-lived's objects to be deleted")
    assert httpx.get(gw.function_url("short-lived"), timeout=30).status_code == 404


# ---- streamfaas up ------------------------------------------------------------------------------
def test_streamfaas_up_builds_pushes_and_deploys(gw: K8sGateway, k8s_env: K8sEnv, base_image: str, tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples" / "stream", tmp_path / "stream")
    stack = tmp_path / "stack.yaml"
    stack.write_text("version: 1.0\nfunctions:\n  up-stream:\n    lang: python3-flask\n    handler: ./stream\n    image: up-stream:latest\n")
    refused = _cli(gw, "up", "-f", str(stack))
    assert refused.returncode == 2 and "--registry" in refused.stderr  # local images mean nothing to a cluster
    done = _cli(gw, "up", "-f", str(stack), "--registry", k8s_env.registry, "--base-image", base_image, "--timeout", "120")
    assert done.returncode == 0, done.stderr[-3000:]
    with httpx.Client(timeout=60) as client, connect_sse(client, "POST", gw.function_url("up-stream")) as es:
        events = list(es.iter_sse())
    assert events[-1].event == "done" and len(events) > 10
    image = gw.status("up-stream")["image"]
    assert image == f"{k8s_env.registry}/up-stream:latest"


def test_images_come_from_the_registry_not_this_machine(gw: K8sGateway, kubectl: Kubectl, probe: str) -> None:
    pod = kubectl.get("pods", namespace=gw.namespace, selector=f"faas_function={probe}")["items"][0]
    assert pod["status"]["containerStatuses"][0]["imageID"]  # pulled by the kubelet's containerd
    assert pod["status"]["podIP"].startswith("10.244.")
