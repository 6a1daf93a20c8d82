"""A Service that is not a function's, in a namespace the gateway serves, is never changed or
deleted by a deploy or a remove of a function of its name (on the test cluster's API server):
the deploy is refused (409, naming the Service) before any object is made or changed, and so is
any other refused deploy (a bad quantity, a bad label, a Deployment that is not a function's)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from k8s_fixture import K8sGateway, Kubectl, require_cluster

require_cluster()
pytestmark = pytest.mark.k8s

NO_IMAGE = "127.0.0.1:1/none:1"  # nothing listens on port 1: the objects are made, the pull fails
FOREIGN_SELECTOR = {"app": "nats"}


def _foreign_service(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    """A Service of someone else's in front of their pods (as NATS's would be)."""
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": ns, "labels": {"app": "nats"}},
               "spec": {"selector": FOREIGN_SELECTOR, "ports": [{"name": "client", "port": 4222, "targetPort": 4222}]}}
    kubectl.run("apply", "-f", "-", input=json.dumps(service))
    made = kubectl.get("service", name, namespace=ns)
    assert made is not None
    return dict(made)


def _foreign_deployment(kubectl: Kubectl, name: str, ns: str) -> None:
    labels = {"app": name}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns, "labels": labels},
                  "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                           "template": {"metadata": {"labels": labels},
                                        "spec": {"containers": [{"name": "c", "image": NO_IMAGE}]}}}}
    kubectl.run("apply", "-f", "-", input=json.dumps(deployment))


def _unchanged(kubectl: Kubectl, before: dict[str, Any]) -> None:
    meta = before["metadata"]
    now = kubectl.get("service", meta["name"], namespace=meta["namespace"])
    assert now is not None, "the foreign Service was deleted"
    assert now["metadata"]["uid"] == meta["uid"]
    assert now["metadata"]["resourceVersion"] == meta["resourceVersion"], now
    assert now["spec"]["selector"] == FOREIGN_SELECTOR
    assert "faas_function" not in (now["metadata"].get("labels") or {})


def _deploy(gw: K8sGateway, name: str, **fields: Any) -> Any:
    return gw.http.post(f"{gw.url}/system/functions", json={"service": name, "image": NO_IMAGE, **fields})


def test_a_deploy_over_a_foreign_service_is_409_naming_it_and_changes_nothing(k8s_gateway: K8sGateway, kubectl: Kubectl) -> None:
    gw, ns = k8s_gateway, k8s_gateway.namespace
    before = _foreign_service(kubectl, "nats-like", ns)
    r = _deploy(gw, "nats-like", labels=FOREIGN_SELECTOR)
    assert r.status_code == 409, r.text
    assert "Service 'nats-like'" in r.text and ns in r.text
    _unchanged(kubectl, before)
    assert kubectl.get("deployment", "nats-like", namespace=ns) is None
    r = gw.http.put(f"{gw.url}/system/functions", json={"service": "nats-like", "image": NO_IMAGE})
    assert r.status_code in (404, 409), r.text
    _unchanged(kubectl, before)


@pytest.mark.parametrize("fields", [{"limits": {"memory": "lots"}}, {"labels": {"x": "not a label value!"}},
                                    {"constraints": ["pool==untrusted"]}])
def test_a_refused_deploy_leaves_a_foreign_service_as_it_was(k8s_gateway: K8sGateway, kubectl: Kubectl, fields: dict[str, Any]) -> None:
    gw, ns = k8s_gateway, k8s_gateway.namespace
    before = _foreign_service(kubectl, "refused", ns)
    r = _deploy(gw, "refused", **fields)
    assert r.status_code == 400, r.text
    _unchanged(kubectl, before)
    assert kubectl.get("deployment", "refused", namespace=ns) is None


def test_a_deploy_over_a_foreign_deployment_touches_no_service(k8s_gateway: K8sGateway, kubectl: Kubectl) -> None:
    gw, ns = k8s_gateway, k8s_gateway.namespace
    _foreign_deployment(kubectl, "squatted", ns)
    before = _foreign_service(kubectl, "squatted", ns)
    r = _deploy(gw, "squatted")
    assert r.status_code == 409 and "Deployment 'squatted'" in r.text, r.text
    _unchanged(kubectl, before)
    # With no Service of that name, the refused deploy makes none.
    _foreign_deployment(kubectl, "squatted-alone", ns)
    r = _deploy(gw, "squatted-alone")
    assert r.status_code == 409, r.text
    assert kubectl.get("service", "squatted-alone", namespace=ns) is None


def test_a_refused_new_function_leaves_no_service_behind(k8s_gateway: K8sGateway, kubectl: Kubectl) -> None:
    gw, ns = k8s_gateway, k8s_gateway.namespace
    for name, fields in (("badlimit", {"limits": {"memory": "lots"}}), ("badlabel", {"labels": {"x": "not a label value!"}})):
        assert _deploy(gw, name, **fields).status_code == 400
        assert kubectl.get("service", name, namespace=ns) is None
        assert kubectl.get("deployment", name, namespace=ns) is None


def test_remove_leaves_a_service_of_the_functions_name_that_is_not_its_own(k8s_gateway: K8sGateway, kubectl: Kubectl) -> None:
    gw, ns = k8s_gateway, k8s_gateway.namespace
    gw.deploy_image("swapped", NO_IMAGE)
    ours = kubectl.get("service", "swapped", namespace=ns)
    assert ours["metadata"]["labels"]["faas_function"] == "swapped"
    kubectl.run("delete", "service", "swapped", "-n", ns)
    before = _foreign_service(kubectl, "swapped", ns)
    r = gw.http.request("DELETE", f"{gw.url}/system/functions", json={"functionName": "swapped"})
    assert r.status_code == 202, r.text
    assert kubectl.get("deployment", "swapped", namespace=ns) is None
    _unchanged(kubectl, before)


def test_an_update_still_brings_the_functions_own_service_up_to_date(k8s_gateway: K8sGateway, kubectl: Kubectl) -> None:
    gw, ns = k8s_gateway, k8s_gateway.namespace
    gw.deploy_image("own", NO_IMAGE, annotations={"team": "a"})
    r = gw.http.put(f"{gw.url}/system/functions", json={"service": "own", "image": NO_IMAGE, "annotations": {"team": "b"}})
    assert r.status_code in (200, 202), r.text
    service = kubectl.get("service", "own", namespace=ns)
    assert service["metadata"]["annotations"]["team"] == "b"
    assert service["spec"]["selector"] == {"faas_function": "own"}
    r = gw.http.request("DELETE", f"{gw.url}/system/functions", json={"functionName": "own"})
    assert r.status_code == 202, r.text
    assert kubectl.get("service", "own", namespace=ns) is None
