"""The kubernetes provider under least privilege: a gateway whose service account has only what
the Helm chart grants (a Role in the functions namespace, and reading namespaces cluster-wide)
does all its work, and a labelled namespace it may not read is refused by name without
breaking the others. The identity is real: a ServiceAccount's token, checked by the API
server's RBAC."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from k8s_fixture import (
    K8sEnv,
    K8sGateway,
    Kubectl,
    delete_namespace,
    make_namespace,
    require_cluster,
)

from platform_fixture import wait_for

require_cluster()
pytestmark = pytest.mark.k8s

NO_IMAGE = "127.0.0.1:1/none:1"  # nothing listens on port 1: the objects are made, the pull fails
# What the chart's Role grants in each namespace the gateway serves (the provider's needs).
ROLE_RULES = [
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch", "create", "update", "delete"]},
    {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["endpoints", "pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "create", "update", "patch", "delete"]},
]
NAMESPACE_RULES = [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]
# What the gateway logs when its credentials fall short (none of it may appear when they do not).
REFUSALS = ("forbidden", "may not", "not allowed", "cannot watch")


@dataclass
class Identity:
    account: str
    kubeconfig: Path
    token: str


def _apply(kubectl: Kubectl, *objects: dict[str, object]) -> None:
    kubectl.run("apply", "-f", "-", input=yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def _grant_role(kubectl: Kubectl, account: str, home: str, namespace: str) -> None:
    """The chart's Role in ``namespace``, bound to ``account`` (of ``home``)."""
    meta = {"name": f"{account}-functions", "namespace": namespace}
    _apply(
        kubectl,
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta, "rules": ROLE_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": meta["name"]},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": home}]},
    )


def _service_account(kubectl: Kubectl, env: K8sEnv, home: str, folder: Path, *, read_namespaces: bool) -> Identity:
    """A ServiceAccount in ``home`` with the chart's Role there (and, if asked, reading namespaces
    cluster-wide), and a kubeconfig that authenticates as it (same server and CA as the admin's)."""
    account = f"sf-gw-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "serviceaccount", account, "-n", home)
    _grant_role(kubectl, account, home, home)
    if read_namespaces:
        meta = {"name": account}
        _apply(
            kubectl,
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta, "rules": NAMESPACE_RULES},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta,
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": account},
             "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": home}]},
        )

    def token_secret() -> str:
        # Kubernetes 1.20: the token controller makes a service-account-token Secret for it.
        for s in kubectl.get("secrets", namespace=home)["items"]:
            if (s["type"] == "kubernetes.io/service-account-token" and (s.get("data") or {}).get("token")
                    and s["metadata"].get("annotations", {}).get("kubernetes.io/service-account.name") == account):
                return str(s["data"]["token"])
        return ""

    token = base64.b64decode(wait_for(token_secret, 30, interval=0.2, what="the service account's token")).decode()
    admin = yaml.safe_load(env.kubeconfig.read_text())
    context = next(c["context"] for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "gateway", "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "gateway", "context": {"cluster": cluster["name"], "user": account, "namespace": home}}],
    }
    path = folder / f"{account}.kubeconfig"
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config))
    return Identity(account, path, token)


def _delete_cluster_rbac(kubectl: Kubectl, account: str) -> None:
    # Cluster-scoped: the namespace's removal does not take these with it.
    kubectl.run("delete", "clusterrolebinding,clusterrole", account, "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def least(kubectl: Kubectl, k8s_env: K8sEnv, namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    """The chart's identity: the Role in the functions namespace, and reading namespaces."""
    identity = _service_account(kubectl, k8s_env, namespace, tmp_path_factory.mktemp("rbac"), read_namespaces=True)
    try:
        yield identity
    finally:
        _delete_cluster_rbac(kubectl, identity.account)


@pytest.fixture(scope="module")
def gateway_as(k8s_gateway_factory: Callable[..., K8sGateway]) -> Callable[[Identity], K8sGateway]:
    return lambda identity: k8s_gateway_factory("--cold-start-timeout", "20s", kubeconfig=identity.kubeconfig)


@pytest.fixture(scope="module")
def gw(gateway_as: Callable[[Identity], K8sGateway], least: Identity) -> K8sGateway:
    return gateway_as(least)


def _refusals(gw: K8sGateway, *, of_others: bool = False) -> list[str]:
    """The gateway's log lines about permissions it lacks. Other tests' labelled namespaces
    (the cluster is shared) are refused too, rightly: those lines count only with ``of_others``."""
    lines = [line for line in gw.log_path.read_text().splitlines() if any(r in line.lower() for r in REFUSALS)]
    if of_others:
        return lines
    return [line for line in lines if "may not read its functions" not in line or f"namespace {gw.namespace!r}:" in line]


def test_the_charts_permissions_are_enough_to_deploy_list_scale_and_remove(gw: K8sGateway, kubectl: Kubectl, least: Identity) -> None:
    ns, url = gw.namespace, gw.url
    value = "rbac-secret-value-not-for-logs"
    assert gw.http.post(f"{url}/system/secrets", json={"name": "rbac-key", "value": value}).status_code == 201
    assert [s["name"] for s in gw.http.get(f"{url}/system/secrets").json()] == ["rbac-key"]
    gw.deploy_image("least", NO_IMAGE, secrets=["rbac-key"], labels={"com.openfaas.scale.max": "3"})
    assert [f["name"] for f in gw.http.get(f"{url}/system/functions").json()] == ["least"]
    r = gw.http.post(f"{url}/system/scale-function/least", json={"replicas": 2})
    assert r.status_code == 202, r.text
    assert kubectl.get("deployment", "least", namespace=ns)["spec"]["replicas"] == 2
    wait_for(lambda: gw.status("least")["replicas"] == 2, 10, what="the scale seen by the watch")
    # Pods are watched: the failed pull is the function's start error.
    status = wait_for(lambda: gw.status("least").get("startError"), 60, interval=0.2, what="a startError")
    assert "ErrImagePull" in status or "ImagePullBackOff" in status, status
    r = gw.http.get(f"{url}/system/logs", params={"name": "least", "tail": "10"})
    assert r.status_code == 200, r.text
    r = gw.http.put(f"{url}/system/functions", json={"service": "least", "image": NO_IMAGE, "secrets": ["rbac-key"], "envVars": {"A": "1"}})
    assert r.status_code == 202, r.text
    assert gw.http.request("DELETE", f"{url}/system/secrets", json={"name": "rbac-key"}).status_code == 409  # in use
    r = gw.http.request("DELETE", f"{url}/system/functions", json={"functionName": "least"})
    assert r.status_code == 202, r.text
    assert kubectl.get("deployment", "least", namespace=ns) is None and kubectl.get("service", "least", namespace=ns) is None
    assert gw.http.request("DELETE", f"{url}/system/secrets", json={"name": "rbac-key"}).status_code == 200
    assert kubectl.get("secret", "rbac-key", namespace=ns) is None
    log = gw.log_path.read_text()
    assert not _refusals(gw), log
    assert value not in log and least.token not in log


def test_a_labelled_namespace_it_may_not_read_is_refused_by_name_and_breaks_nothing(
        gw: K8sGateway, kubectl: Kubectl, least: Identity) -> None:
    other = make_namespace(kubectl, "sf-noread")
    try:
        wait_for(lambda: other in gw.http.get(f"{gw.url}/system/namespaces").json(), 20, what="the labelled namespace")
        r = gw.http.get(f"{gw.url}/system/functions", params={"namespace": other})
        assert r.status_code == 502 and other in r.text and "may not read" in r.text, r.text
        r = gw.http.post(f"{gw.url}/system/functions", json={"service": "x", "image": NO_IMAGE, "namespace": other})
        assert r.status_code == 502 and "may not read" in r.text, r.text
        r = httpx.get(f"{gw.url}/function/x.{other}", timeout=30)
        assert r.status_code == 502 and "may not read" in r.text, r.text
        # The functions namespace is served as ever.
        gw.deploy_image("unbroken", NO_IMAGE)
        assert [f["name"] for f in gw.http.get(f"{gw.url}/system/functions").json()] == ["unbroken"]
        lines = [line for line in _refusals(gw, of_others=True) if other in line]
        assert len(lines) == 1, lines  # one line for the namespace, not one per kind or retry
        assert least.token not in gw.log_path.read_text()
        # Granted later: served without a restart (at the next retry of its watches).
        _grant_role(kubectl, least.account, gw.namespace, other)
        r = wait_for(lambda: (x := gw.http.get(f"{gw.url}/system/functions", params={"namespace": other})).status_code == 200 and x,
                     30, interval=0.2, what="the namespace to be readable")
        assert r.json() == []
        gw.deploy_image("granted", NO_IMAGE, namespace=other)
        assert kubectl.get("deployment", "granted", namespace=other) is not None
        # Its label removed: no longer served.
        kubectl.run("label", "namespace", other, "openfaas-")
        wait_for(lambda: other not in gw.http.get(f"{gw.url}/system/namespaces").json(), 20, what="the namespace to go")
        r = gw.http.get(f"{gw.url}/system/function/granted", params={"namespace": other})
        assert r.status_code in (400, 404), r.text
    finally:
        delete_namespace(kubectl, other)


def test_without_reading_namespaces_the_functions_namespace_is_still_served(
        gateway_as: Callable[[Identity], K8sGateway], kubectl: Kubectl, k8s_env: K8sEnv, namespace: str,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    identity = _service_account(kubectl, k8s_env, namespace, tmp_path_factory.mktemp("rbac"), read_namespaces=False)
    gw = gateway_as(identity)
    assert gw.http.get(f"{gw.url}/system/namespaces").json() == [namespace]
    gw.deploy_image("nsless", NO_IMAGE)
    assert "nsless" in [f["name"] for f in gw.http.get(f"{gw.url}/system/functions").json()]
    lines = _refusals(gw)
    assert len(lines) == 1 and "cannot watch namespaces" in lines[0], lines
    assert identity.token not in gw.log_path.read_text()
    gw.stop()
