"""The kubernetes provider's objects, through the real gateway's /system API, against the test
cluster's API server. No pod needs to run here: the image is one that cannot be pulled
(``127.0.0.1:1/…``), and the objects exist all the same."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from k8s_fixture import K8sGateway, Kubectl, delete_namespace, make_namespace, require_cluster

from platform_fixture import wait_for

require_cluster()
pytestmark = pytest.mark.k8s

NO_IMAGE = "127.0.0.1:1/none:1"  # nothing listens on port 1: the pull fails at once


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_system_info_and_namespaces_name_kubernetes(k8s_gateway: K8sGateway) -> None:
    info = k8s_gateway.http.get(f"{k8s_gateway.url}/system/info").json()
    assert info["provider"]["orchestration"] == "kubernetes"
    assert info["provider"]["provider"] == "streamfaas-kubernetes"
    namespaces = k8s_gateway.http.get(f"{k8s_gateway.url}/system/namespaces").json()
    assert namespaces[0] == k8s_gateway.namespace


def test_deploy_makes_a_faas_netes_shaped_deployment_service_and_secret_volume(k8s_gateway: K8sGateway, kubectl: Kubectl) -> None:
    gw, ns = k8s_gateway, k8s_gateway.namespace
    value = "s3cr3t-value-that-must-not-be-logged"
    r = gw.http.post(f"{gw.url}/system/secrets", json={"name": "api-key", "value": value})
    assert r.status_code == 201, r.text
    r = gw.http.post(f"{gw.url}/system/secrets", json={"name": "other-key", "value": "unused"})
    assert r.status_code == 201, r.text
    gw.deploy_image(
        "shape", NO_IMAGE, envProcess="python index.py", envVars={"write_timeout": "30s", "drain_timeout": "10s"},
        labels={"team": "a", "com.openfaas.scale.min": "2"}, annotations={"topic": "x"}, secrets=["api-key"],
        limits={"memory": "128Mi", "cpu": "500m"}, requests={"memory": "64Mi"},
    )
    dep = kubectl.get("deployment", "shape", namespace=ns)
    assert dep["metadata"]["labels"]["faas_function"] == "shape"
    assert dep["spec"]["replicas"] == 2  # com.openfaas.scale.min
    assert dep["spec"]["selector"]["matchLabels"] == {"faas_function": "shape"}
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    template = dep["spec"]["template"]
    assert template["metadata"]["labels"] == {"faas_function": "shape", "team": "a", "com.openfaas.scale.min": "2"}
    assert template["metadata"]["annotations"] == {"topic": "x"}
    pod = template["spec"]
    assert pod["terminationGracePeriodSeconds"] == 15  # drain_timeout 10s + a margin
    assert pod["automountServiceAccountToken"] is False
    c = _container(dep)
    assert c["image"] == NO_IMAGE and c["imagePullPolicy"] == "IfNotPresent"
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    sc = c["securityContext"]  # a function is untrusted code
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    env = _env(c)
    assert env["fprocess"] == "python index.py" and env["write_timeout"] == "30s"
    assert env["STREAMFAAS_WATCHDOG_HOST"] == "0.0.0.0" and env["port"] == "8080"
    assert c["resources"] == {"limits": {"memory": "128Mi", "cpu": "500m"}, "requests": {"memory": "64Mi"}}
    assert c["readinessProbe"]["httpGet"] == {"path": "/_/ready", "port": 8080, "scheme": "HTTP"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/_/health", "port": 8080, "scheme": "HTTP"}
    # Only this function's secret, read-only at /var/openfaas/secrets.
    (volume,) = pod["volumes"]
    assert [s["secret"]["name"] for s in volume["projected"]["sources"]] == ["api-key"]
    assert c["volumeMounts"] == [{"name": volume["name"], "mountPath": "/var/openfaas/secrets", "readOnly": True}]
    svc = kubectl.get("service", "shape", namespace=ns)
    assert svc["spec"]["selector"] == {"faas_function": "shape"}
    assert svc["spec"]["ports"][0]["port"] == 8080 and svc["spec"]["ports"][0]["targetPort"] == 8080
    secret = kubectl.get("secret", "api-key", namespace=ns)
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "streamfaas"
    assert base64.b64decode(secret["data"]["api-key"]).decode() == value
    # The gateway reports what was asked, as the local provider does.
    status = gw.status("shape")
    assert status["envProcess"] == "python index.py" and status["secrets"] == ["api-key"]
    assert status["labels"]["team"] == "a" and status["labels"]["faas_function"] == "shape"
    assert status["limits"] == {"memory": "128Mi", "cpu": "500m"} and status["replicas"] == 2
    listed = [s["name"] for s in gw.http.get(f"{gw.url}/system/secrets").json()]
    assert listed == ["api-key", "other-key"]
    r = gw.http.request("DELETE", f"{gw.url}/system/secrets", json={"name": "api-key"})
    assert r.status_code == 409 and "shape" in r.text  # in use
    assert value not in gw.log_path.read_text()


def test_update_keeps_replicas_and_rolls_the_new_settings(k8s_gateway: K8sGateway, kubectl: Kubectl) -> None:
    gw, ns = k8s_gateway, k8s_gateway.namespace
    gw.deploy_image("rolling", NO_IMAGE, envVars={"A": "1"})
    assert gw.http.post(f"{gw.url}/system/scale-function/rolling", json={"replicas": 3}).status_code == 202
    r = gw.http.put(f"{gw.url}/system/functions", json={"service": "rolling", "image": NO_IMAGE + "b", "envVars": {"A": "2"}})
    assert r.status_code == 202, r.text
    dep = kubectl.get("deployment", "rolling", namespace=ns)
    assert dep["spec"]["replicas"] == 3
    assert _env(_container(dep))["A"] == "2" and _container(dep)["image"] == NO_IMAGE + "b"
    assert gw.status("rolling")["envVars"] == {"A": "2"}
    r = gw.http.put(f"{gw.url}/system/functions", json={"service": "never-made", "image": NO_IMAGE})
    assert r.status_code == 404


def test_scale_sets_the_deployment_replicas_within_the_max_label(k8s_gateway: K8sGateway, kubectl: Kubectl) -> None:
    gw, ns = k8s_gateway, k8s_gateway.namespace
    gw.deploy_image("scaled", NO_IMAGE, labels={"com.openfaas.scale.max": "4"})

    def scale(n: int) -> int:
        r = gw.http.post(f"{gw.url}/system/scale-function/scaled", json={"serviceName": "scaled", "replicas": n})
        assert r.status_code == 202, r.text
        return int(kubectl.get("deployment", "scaled", namespace=ns)["spec"]["replicas"])

    assert scale(3) == 3
    assert scale(10) == 4  # clamped to com.openfaas.scale.max
    assert scale(0) == 0
    assert gw.status("scaled")["replicas"] == 0
    r = gw.http.post(f"{gw.url}/system/scale-function/absent", json={"replicas": 1})
    assert r.status_code == 404


def test_a_restarted_or_second_gateway_finds_every_function(k8s_gateway: K8sGateway, k8s_gateway_factory: Callable[..., K8sGateway]) -> None:
    gw = k8s_gateway
    gw.deploy_image("kept", NO_IMAGE, envVars={"K": "v"}, labels={"com.openfaas.scale.min": "0"},
                    annotations={"com.openfaas.auth": "private"})
    other = k8s_gateway_factory()

    def listing(g: K8sGateway) -> dict[str, dict[str, Any]]:
        return {f["name"]: {k: f.get(k) for k in ("image", "envVars", "labels", "annotations", "secrets", "replicas")}
                for f in g.http.get(f"{g.url}/system/functions").json()}

    assert listing(other)["kept"] == listing(gw)["kept"]
    assert listing(other) == listing(gw)
    # A private function's token is the same from every gateway: none keeps it.
    tokens = {g.http.get(f"{g.url}/system/function-token/kept").json()["token"] for g in (gw, other)}
    assert len(tokens) == 1
    r = httpx.post(f"{other.url}/function/kept", headers={"Authorization": f"Bearer {tokens.pop()}"}, timeout=30)
    assert r.status_code == 503  # allowed in, but the function has no ready pod and cannot start
    other.stop()


def test_an_image_that_cannot_be_pulled_is_a_start_error_and_a_503_with_the_reason(k8s_gateway: K8sGateway) -> None:
    gw = k8s_gateway
    gw.deploy_image("nopull", NO_IMAGE)
    status = wait_for(lambda: gw.status("nopull").get("startError"), 60, interval=0.2, what="a startError")
    assert "ErrImagePull" in status or "ImagePullBackOff" in status, status
    began = time.monotonic()
    r = httpx.get(f"{gw.url}/function/nopull", timeout=30)
    assert r.status_code == 503
    assert "failing to start" in r.text and ("ErrImagePull" in r.text or "ImagePullBackOff" in r.text), r.text
    assert time.monotonic() - began < 5  # said at once, not after the cold-start timeout


def test_remove_deletes_every_object_of_the_function(k8s_gateway: K8sGateway, kubectl: Kubectl) -> None:
    gw, ns = k8s_gateway, k8s_gateway.namespace
    gw.deploy_image("doomed", NO_IMAGE)
    assert kubectl.get("deployment", "doomed", namespace=ns) is not None
    r = gw.http.request("DELETE", f"{gw.url}/system/functions", json={"functionName": "doomed"})
    assert r.status_code == 202, r.text
    assert gw.http.get(f"{gw.url}/system/function/doomed").status_code == 404
    assert kubectl.get("deployment", "doomed", namespace=ns) is None
    assert kubectl.get("service", "doomed", namespace=ns) is None
    wait_for(lambda: not kubectl.get("replicasets", namespace=ns, selector="faas_function=doomed")["items"], 30,
             interval=0.2, what="the ReplicaSets to be collected")
    wait_for(lambda: all(p["metadata"].get("deletionTimestamp") for p in
                         kubectl.get("pods", namespace=ns, selector="faas_function=doomed")["items"]), 30,
             interval=0.2, what="the pods to be deleted")
    r = gw.http.request("DELETE", f"{gw.url}/system/functions", json={"functionName": "doomed"})
    assert r.status_code == 404


def test_secrets_crud_through_the_system_api(k8s_gateway: K8sGateway, kubectl: Kubectl) -> None:
    gw, ns = k8s_gateway, k8s_gateway.namespace
    url = f"{gw.url}/system/secrets"
    raw = base64.b64encode(b"\x00\xffbytes").decode()
    assert gw.http.post(url, json={"name": "crud", "rawValue": raw}).status_code == 201
    assert gw.http.post(url, json={"name": "crud", "value": "again"}).status_code == 409
    assert gw.http.put(url, json={"name": "crud", "value": "v2"}).status_code == 200
    assert base64.b64decode(kubectl.get("secret", "crud", namespace=ns)["data"]["crud"]) == b"v2"
    assert gw.http.put(url, json={"name": "nope", "value": "v"}).status_code == 404
    assert gw.http.post(url, json={"name": "bad/name", "value": "v"}).status_code == 400
    assert gw.http.request("DELETE", url, json={"name": "crud"}).status_code == 200
    assert kubectl.get("secret", "crud", namespace=ns) is None
    # The gateway's own key is a Secret too, but no function secret: not listed, not mountable.
    assert "streamfaas-function-token-key" not in [s["name"] for s in gw.http.get(url).json()]
    r = gw.http.post(f"{gw.url}/system/functions", json={"service": "steal", "image": NO_IMAGE, "secrets": ["streamfaas-function-token-key"]})
    assert r.status_code == 400 and "streamfaas-function-token-key" in r.text


def test_bad_requests_are_400s_that_say_why(k8s_gateway: K8sGateway) -> None:
    gw = k8s_gateway
    r = gw.http.post(f"{gw.url}/system/functions", json={"service": "badmem", "image": NO_IMAGE, "limits": {"memory": "lots"}})
    assert r.status_code == 400 and "memory" in r.text, r.text
    assert not gw.http.get(f"{gw.url}/system/function/badmem").status_code == 200
    r = gw.http.post(f"{gw.url}/system/functions", json={"service": "badlabel", "image": NO_IMAGE, "labels": {"x": "not a label value!"}})
    assert r.status_code == 400, r.text
    r = gw.http.post(f"{gw.url}/system/functions", json={"service": "nosecret", "image": NO_IMAGE, "secrets": ["absent"]})
    assert r.status_code == 400 and "absent" in r.text
    r = gw.http.get(f"{gw.url}/system/functions", params={"namespace": "kube-system"})
    assert r.status_code == 400 and "kube-system" in r.text  # not labelled openfaas=1


def test_functions_go_to_other_namespaces_labelled_openfaas(k8s_gateway: K8sGateway, kubectl: Kubectl) -> None:
    gw = k8s_gateway
    other = make_namespace(kubectl, "sf-other")
    try:
        wait_for(lambda: other in gw.http.get(f"{gw.url}/system/namespaces").json(), 10, what="the labelled namespace")
        gw.deploy_image("elsewhere", NO_IMAGE, namespace=other)
        assert kubectl.get("deployment", "elsewhere", namespace=other) is not None
        assert kubectl.get("deployment", "elsewhere", namespace=gw.namespace) is None
        names = [f["name"] for f in gw.http.get(f"{gw.url}/system/functions", params={"namespace": other}).json()]
        assert names == ["elsewhere"]
        assert gw.http.get(f"{gw.url}/system/function/elsewhere").status_code == 404  # not in the default one
        assert gw.http.get(f"{gw.url}/system/function/elsewhere", params={"namespace": other}).status_code == 200
        r = httpx.get(f"{gw.url}/function/elsewhere.unlabelled-ns", timeout=30)
        assert r.status_code == 404
    finally:
        delete_namespace(kubectl, other)
