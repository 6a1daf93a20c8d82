"""The Helm chart (chart/streamfaas) as helm renders it: lint, the objects of the default
install and of every option, and RBAC that is exactly what the kubernetes provider calls.
Needs only the helm binary (scripts/helm.sh); the cluster tests are in
tests/k8s/test_helm_install.py."""

from __future__ import annotations

import base64
import json
import re
import string
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ruamel.yaml import YAML

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helm_fixture import CHART, find, helm_run, render, require_helm, secret_value  # noqa: E402

from platform_fixture import REPO  # noqa: E402

PROVIDER = REPO / "src" / "streamfaas" / "provider" / "kubernetes"
FN_NS = "openfaas-fn"

# Each Kubernetes API call of the provider, as (API group, resource, verbs) it needs. An informer's
# list is also watched. A call missing here fails test_role_grants_exactly_what_the_provider_calls:
# add it, and to the chart's Role (or ClusterRole) only what it needs.
CALLS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "read_namespaced_deployment": ("apps", "deployments", ("get",)),
    "list_namespaced_deployment": ("apps", "deployments", ("list", "watch")),
    "create_namespaced_deployment": ("apps", "deployments", ("create",)),
    "replace_namespaced_deployment": ("apps", "deployments", ("update",)),
    "delete_namespaced_deployment": ("apps", "deployments", ("delete",)),
    "patch_namespaced_deployment_scale": ("apps", "deployments/scale", ("patch",)),
    "read_namespaced_service": ("", "services", ("get",)),
    "create_namespaced_service": ("", "services", ("create",)),
    "patch_namespaced_service": ("", "services", ("patch",)),
    "delete_namespaced_service": ("", "services", ("delete",)),
    "read_namespaced_secret": ("", "secrets", ("get",)),
    "list_namespaced_secret": ("", "secrets", ("list",)),
    "create_namespaced_secret": ("", "secrets", ("create",)),
    "patch_namespaced_secret": ("", "secrets", ("patch",)),
    "delete_namespaced_secret": ("", "secrets", ("delete",)),
    "list_namespaced_endpoints": ("", "endpoints", ("list", "watch")),
    "list_namespaced_pod": ("", "pods", ("list", "watch")),
    "read_namespaced_pod_log": ("", "pods/log", ("get",)),
    # The autoscaler's leader election and load sharing (_lease.py).
    "read_namespaced_lease": ("coordination.k8s.io", "leases", ("get",)),
    "list_namespaced_lease": ("coordination.k8s.io", "leases", ("list",)),
    "create_namespaced_lease": ("coordination.k8s.io", "leases", ("create",)),
    "replace_namespaced_lease": ("coordination.k8s.io", "leases", ("update",)),
    "patch_namespaced_lease": ("coordination.k8s.io", "leases", ("patch",)),
    "delete_namespaced_lease": ("coordination.k8s.io", "leases", ("delete",)),
    # Cluster-scoped: the ClusterRole's.
    "read_namespace": ("", "namespaces", ("get",)),
    "list_namespace": ("", "namespaces", ("list", "watch")),
}
CLUSTER_RESOURCES = {"namespaces"}

pytestmark = pytest.mark.helm


@pytest.fixture(scope="module")
def helm() -> Path:
    return require_helm()


@pytest.fixture(scope="module")
def default(helm: Path) -> list[dict[str, Any]]:
    return render(helm)


@pytest.fixture(scope="module")
def everything(helm: Path) -> list[dict[str, Any]]:
    return render(helm, "queue.enabled=true", "networkPolicy.enabled=true")


def _triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def _gateway_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    dep = find(objects, "Deployment", "rel-streamfaas-gateway")
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _provider_calls() -> set[str]:
    calls = set()
    for source in PROVIDER.glob("*.py"):
        calls |= set(re.findall(r"\b(?:core|apps|coordination)\.([a-z_]+)\b", source.read_text()))
    return calls


# ---- lint ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sets", [[], ["queue.enabled=true", "networkPolicy.enabled=true", "queue.nats.persistence.enabled=false",
                                        "kubernetesApi.host=10.244.0.1", "kubernetesApi.port=6443"]])
def test_helm_lint_strict_passes(helm: Path, sets: list[str]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for value in sets:
        args += ["--set", value]
    done = helm_run(helm, *args, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


# ---- the default install ------------------------------------------------------------------------
def test_default_install_renders_the_gateway_and_its_rights_only(default: list[dict[str, Any]]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in default)
    assert kinds == sorted([
        ("Namespace", FN_NS), ("ServiceAccount", "rel-streamfaas"), ("Secret", "rel-streamfaas-auth"),
        ("Role", "rel-streamfaas-functions"), ("RoleBinding", "rel-streamfaas-functions"),
        ("ClusterRole", "sf-system-rel-streamfaas-namespaces"), ("ClusterRoleBinding", "sf-system-rel-streamfaas-namespaces"),
        ("Deployment", "rel-streamfaas-gateway"), ("Service", "rel-streamfaas-gateway"),
        ("PodDisruptionBudget", "rel-streamfaas-gateway"),
    ])
    ns = find(default, "Namespace")
    assert ns["metadata"]["labels"]["openfaas"] == "1"
    for obj in default:
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            assert obj["metadata"]["namespace"] == "sf-system", obj["metadata"]


def test_gateway_runs_two_replicas_with_the_kubernetes_provider_and_probes(default: list[dict[str, Any]]) -> None:
    dep = find(default, "Deployment", "rel-streamfaas-gateway")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "rel-streamfaas"
    c = _gateway_container(default)
    assert c["image"] == "streamfaas:0.1.0"
    assert c["args"][:5] == ["gateway", "--provider=kubernetes", f"--namespace={FN_NS}", "--host=0.0.0.0", "--port=8080"]
    assert "--basic-auth-password-file=/var/run/secrets/streamfaas/password" in c["args"]
    assert not any(a.startswith(("--queue", "--nats", "--no-queue")) for a in c["args"])
    assert "env" not in c  # the kubelet's KUBERNETES_SERVICE_* stand
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    # No root, no privileges, nothing written outside its emptyDirs.
    assert c["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsUser"] == 10001
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"] == {"name": "state", "emptyDir": {}}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/var/lib/streamfaas"] == "state"
    # Only the password reaches the gateway's files.
    assert volumes["auth"]["secret"]["items"] == [{"key": "password", "path": "password"}]
    assert volumes["auth"]["secret"]["secretName"] == "rel-streamfaas-auth"


def test_annotation_values_are_strings_whatever_they_look_like(helm: Path) -> None:
    # helm --set reads 53982554 as a number and true as a bool; the API server refuses both in
    # an annotation ("expected string"), so an upgrade with such a value failed.
    objects = render(helm, "gateway.podAnnotations.rev=53982554", "gateway.podAnnotations.canary=true",
                     "gateway.podAnnotations.note=plain", "serviceAccount.annotations.id=0012")
    pod = find(objects, "Deployment", "rel-streamfaas-gateway")["spec"]["template"]["metadata"]
    assert pod["annotations"] == {"rev": "53982554", "canary": "true", "note": "plain"}
    assert find(objects, "ServiceAccount")["metadata"]["annotations"] == {"id": "0012"}


def test_service_and_disruption_budget_select_the_gateways(default: list[dict[str, Any]]) -> None:
    labels = find(default, "Deployment", "rel-streamfaas-gateway")["spec"]["template"]["metadata"]["labels"]
    svc = find(default, "Service", "rel-streamfaas-gateway")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    pdb = find(default, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    for selector in (svc["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector["app.kubernetes.io/component"] == "gateway"
        assert selector.items() <= labels.items()


@pytest.mark.parametrize(("kube_version", "api"), [("1.20.2", "policy/v1beta1"), ("1.25.0", "policy/v1")])
def test_disruption_budget_uses_the_api_the_cluster_has(helm: Path, kube_version: str, api: str) -> None:
    assert find(render(helm, kube_version=kube_version), "PodDisruptionBudget")["apiVersion"] == api


# ---- RBAC ---------------------------------------------------------------------------------------
def test_role_grants_exactly_what_the_provider_calls(default: list[dict[str, Any]]) -> None:
    calls = _provider_calls()
    unknown = sorted(calls - CALLS.keys())
    assert not unknown, f"the provider calls {unknown}: add them to CALLS and the chart's RBAC"
    needed = {(CALLS[c][0], CALLS[c][1], verb) for c in calls for verb in CALLS[c][2]}
    role = find(default, "Role")
    assert role["metadata"]["namespace"] == FN_NS
    assert _triples(role["rules"]) == {t for t in needed if t[1] not in CLUSTER_RESOURCES}
    cluster = find(default, "ClusterRole")
    assert _triples(cluster["rules"]) == {t for t in needed if t[1] in CLUSTER_RESOURCES}


def test_nothing_cluster_wide_beyond_reading_namespaces(helm: Path, everything: list[dict[str, Any]]) -> None:
    for objects in (render(helm), everything):
        clusterwide = [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
        assert len(clusterwide) == 2
        cluster_role = find(objects, "ClusterRole")
        assert _triples(cluster_role["rules"]) == {("", "namespaces", v) for v in ("get", "list", "watch")}
        assert find(objects, "ClusterRoleBinding")["roleRef"]["name"] == cluster_role["metadata"]["name"]
        # Roles live only in the functions namespace; nothing binds to a built-in role.
        for obj in objects:
            if obj["kind"] in ("Role", "RoleBinding"):
                assert obj["metadata"]["namespace"] == FN_NS
            if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
                assert obj["roleRef"]["name"].startswith(("rel-streamfaas", "sf-system-rel-streamfaas"))
                assert obj["subjects"] == [{"kind": "ServiceAccount", "name": "rel-streamfaas", "namespace": "sf-system"}]


def test_rbac_follows_the_functions_namespace_and_service_account(helm: Path) -> None:
    objects = render(helm, "functionNamespace.name=fns", "functionNamespace.create=false",
                     "serviceAccount.create=false", "serviceAccount.name=existing")
    assert not [o for o in objects if o["kind"] in ("Namespace", "ServiceAccount")]
    assert find(objects, "Role")["metadata"]["namespace"] == "fns"
    assert find(objects, "RoleBinding")["subjects"][0]["name"] == "existing"
    assert "--namespace=fns" in _gateway_container(objects)["args"]


# ---- the admin password -------------------------------------------------------------------------
def test_admin_password_is_generated_and_mounted_as_a_file(helm: Path, default: list[dict[str, Any]]) -> None:
    secret = find(default, "Secret", "rel-streamfaas-auth")
    password = secret_value(secret, "password")
    assert len(password) == 32 and set(password) <= set(string.ascii_letters + string.digits)
    assert secret_value(secret, "user") == "admin"
    assert "config.yml" not in secret["data"]  # no queue workers, no copy of the credentials
    other = secret_value(find(render(helm), "Secret", "rel-streamfaas-auth"), "password")
    assert other != password  # random per install (an upgrade reads the installed one back)
    text = (CHART / "templates" / "auth-secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in text


# ---- queue --------------------------------------------------------------------------------------
def test_queue_runs_nats_and_workers_and_the_gateways_queue_into_it(everything: list[dict[str, Any]]) -> None:
    nats = find(everything, "StatefulSet", "rel-streamfaas-nats")
    nats_pod = nats["spec"]["template"]["spec"]
    assert nats["spec"]["replicas"] == 1
    container = nats_pod["containers"][0]
    assert container["image"] == "streamfaas-nats:0.1.0"
    assert "--jetstream" in container["args"] and "--store_dir=/data" in container["args"]
    assert container["readinessProbe"]["httpGet"]["port"] == "monitor"
    assert nats_pod["automountServiceAccountToken"] is False
    assert nats["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    svc = find(everything, "Service", "rel-streamfaas-nats")
    assert svc["spec"]["ports"][0]["port"] == 4222

    gateway = _gateway_container(everything)
    args = gateway["args"]
    assert {"--queue=nats", "--nats-stream=STREAMFAAS_ASYNC", "--no-queue-worker"} <= set(args)
    # NATS asks for a password, and its URL with it reaches the gateway from a Secret, never
    # on a command line (a function pod that reaches NATS cannot queue a job naming any function).
    assert not any(a.startswith("--nats-url") for a in args)
    from_secret = {"secretKeyRef": {"name": "rel-streamfaas-nats-auth", "key": "url"}}
    assert {"name": "NATS_URL", "valueFrom": from_secret} in gateway["env"]
    nats_secret = find(everything, "Secret", "rel-streamfaas-nats-auth")
    password = secret_value(nats_secret, "password")
    assert len(password) == 32 and password.isalnum()
    assert secret_value(nats_secret, "url") == f"nats://streamfaas:{password}@rel-streamfaas-nats:4222"
    assert secret_value(nats_secret, "auth.conf") == f'authorization {{\n  user: streamfaas\n  password: "{password}"\n}}\n'
    assert container["args"][0] == "--config=/etc/nats/auth.conf"
    assert {"name": "auth", "mountPath": "/etc/nats", "readOnly": True} in container["volumeMounts"]
    auth_volume = {v["name"]: v for v in nats_pod["volumes"]}["auth"]["secret"]
    assert auth_volume["secretName"] == "rel-streamfaas-nats-auth" and auth_volume["items"] == [{"key": "auth.conf", "path": "auth.conf"}]
    assert password not in json.dumps(gateway) and password not in json.dumps(nats)

    worker = find(everything, "Deployment", "rel-streamfaas-queue-worker")
    pod = worker["spec"]["template"]["spec"]
    wc = pod["containers"][0]
    gateway_url = "http://rel-streamfaas-gateway:8080"
    assert wc["args"][:3] == ["queue-worker", f"--gateway={gateway_url}", "--queue=nats"]
    assert not any(a.startswith("--nats-url") for a in wc["args"])
    assert pod["automountServiceAccountToken"] is False
    # The worker's credentials: faas-cli's config for that gateway URL, the same password; NATS's
    # URL with its password from the Secret.
    assert wc["env"] == [{"name": "OPENFAAS_CONFIG", "value": "/var/run/secrets/streamfaas"},
                         {"name": "NATS_URL", "valueFrom": from_secret}]
    assert {v["name"]: v for v in pod["volumes"]}["auth"]["secret"]["items"] == [{"key": "config.yml", "path": "config.yml"}]
    secret = find(everything, "Secret", "rel-streamfaas-auth")
    config = YAML(typ="safe").load(secret_value(secret, "config.yml"))
    token = base64.b64encode(f"admin:{secret_value(secret, 'password')}".encode()).decode()
    assert config == {"auths": [{"gateway": gateway_url, "auth": "basic", "token": token}]}


def test_queue_addresses_and_storage_can_be_set(helm: Path) -> None:
    objects = render(helm, "queue.enabled=true", "queue.natsUrl=nats://10.244.0.9:4222",
                     "queue.worker.gatewayUrl=http://10.244.0.8:8080", "queue.nats.persistence.enabled=false")
    password = secret_value(find(objects, "Secret", "rel-streamfaas-nats-auth"), "password")
    assert secret_value(find(objects, "Secret", "rel-streamfaas-nats-auth"), "url") == f"nats://streamfaas:{password}@10.244.0.9:4222"
    worker = find(objects, "Deployment", "rel-streamfaas-queue-worker")["spec"]["template"]
    assert "--gateway=http://10.244.0.8:8080" in worker["spec"]["containers"][0]["args"]
    assert "checksum/gateway-url" in worker["metadata"]["annotations"]
    # NATS_URL comes from a Secret: a new address rolls the gateways and the workers.
    gateway = find(objects, "Deployment", "rel-streamfaas-gateway")["spec"]["template"]
    before = render(helm, "queue.enabled=true", "queue.nats.persistence.enabled=false")
    old_gateway = find(before, "Deployment", "rel-streamfaas-gateway")["spec"]["template"]
    assert gateway["metadata"]["annotations"]["checksum/nats-url"] != old_gateway["metadata"]["annotations"]["checksum/nats-url"]
    assert worker["metadata"]["annotations"]["checksum/nats-url"] == gateway["metadata"]["annotations"]["checksum/nats-url"]
    nats = find(objects, "StatefulSet")
    assert "volumeClaimTemplates" not in nats["spec"]
    assert [v["name"] for v in nats["spec"]["template"]["spec"]["volumes"]] == ["auth", "data"]
    assert {"name": "data", "emptyDir": {}} in nats["spec"]["template"]["spec"]["volumes"]



def test_the_worker_takes_several_gateways_each_with_its_credentials(helm: Path) -> None:
    urls = ["http://10.244.0.8:8080", "http://10.244.0.9:8080"]
    objects = render(helm, "queue.enabled=true", f"queue.worker.gatewayUrls={{{','.join(urls)}}}")
    args = find(objects, "Deployment", "rel-streamfaas-queue-worker")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--gateway=")] == [f"--gateway={u}" for u in urls]
    config = yaml.safe_load(base64.b64decode(find(objects, "Secret", "rel-streamfaas-auth")["data"]["config.yml"]))
    assert [entry["gateway"] for entry in config["auths"]] == urls

# ---- network policy, API address, images --------------------------------------------------------
def test_network_policy_admits_only_the_gateways_to_function_pods(default: list[dict[str, Any]],
                                                                   everything: list[dict[str, Any]]) -> None:
    assert not [o for o in default if o["kind"] == "NetworkPolicy"]
    policy = find(everything, "NetworkPolicy", "rel-streamfaas-functions")
    assert policy["metadata"]["namespace"] == FN_NS
    assert policy["spec"]["podSelector"] == {"matchExpressions": [{"key": "faas_function", "operator": "Exists"}]}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    gateway_labels = find(everything, "Deployment", "rel-streamfaas-gateway")["spec"]["template"]["metadata"]["labels"]
    [rule] = policy["spec"]["ingress"]
    [peer] = rule["from"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "sf-system"}}
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert peer["podSelector"]["matchLabels"].items() <= gateway_labels.items()


def test_network_policy_admits_only_the_gateways_and_workers_to_nats(everything: list[dict[str, Any]]) -> None:
    policy = find(everything, "NetworkPolicy", "rel-streamfaas-nats")
    nats_labels = find(everything, "StatefulSet", "rel-streamfaas-nats")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= nats_labels.items()
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 4222, "protocol": "TCP"}]
    assert sorted(peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in rule["from"]) == ["gateway", "queue-worker"]
    assert all("namespaceSelector" not in peer for peer in rule["from"])  # this release's namespace only


def test_the_functions_namespace_refuses_privileged_pods_where_pod_security_runs(default: list[dict[str, Any]]) -> None:
    labels = find(default, "Namespace", FN_NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline" and labels["openfaas"] == "1"


def test_kubernetes_api_address_becomes_the_gateways_service_env(helm: Path) -> None:
    objects = render(helm, "kubernetesApi.host=10.244.0.1", "kubernetesApi.port=16443")
    assert _gateway_container(objects)["env"] == [
        {"name": "KUBERNETES_SERVICE_HOST", "value": "10.244.0.1"},
        {"name": "KUBERNETES_SERVICE_PORT", "value": "16443"},
    ]


def test_half_an_api_address_is_refused_with_a_message(helm: Path) -> None:
    done = helm_run(helm, "template", "rel", str(CHART), "--set", "kubernetesApi.host=10.244.0.1", check=False)
    assert done.returncode != 0
    assert "kubernetesApi.port is required" in done.stderr


def test_functions_namespace_may_not_be_the_releases(helm: Path) -> None:
    # A function is a Service of its name in its namespace: there, the gateways' and NATS's.
    for sets in (["functionNamespace.name=sf-system"], ["functionNamespace.name=sf-system", "functionNamespace.create=false"]):
        args = [a for value in sets for a in ("--set", value)]
        done = helm_run(helm, "template", "rel", str(CHART), "--namespace", "sf-system", *args, check=False)
        assert done.returncode != 0
        assert "functionNamespace.name must not be the release's namespace (sf-system)" in done.stderr


def test_images_come_from_the_registry_value(helm: Path) -> None:
    objects = render(helm, "images.registry=127.0.0.1:5000", "images.streamfaas.tag=abc", "queue.enabled=true",
                     "images.pullSecrets={regcred}")
    assert _gateway_container(objects)["image"] == "127.0.0.1:5000/streamfaas:abc"
    nats = find(objects, "StatefulSet")["spec"]["template"]["spec"]
    assert nats["containers"][0]["image"] == "127.0.0.1:5000/streamfaas-nats:0.1.0"
    assert nats["imagePullSecrets"] == [{"name": "regcred"}]


# ---- values.yaml --------------------------------------------------------------------------------
def test_every_value_is_documented_with_a_comment() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        key = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9_]*):", line)
        if key is None or " #" in line:
            continue
        above = lines[i - 1].strip() if i else ""
        if not above.startswith("#"):
            undocumented.append(f"values.yaml:{i + 1}: {key.group(2)}")
    assert not undocumented, undocumented
    # The top-level sections, as the README and NOTES.txt name them.
    values = YAML(typ="safe").load((CHART / "values.yaml").read_text())
    assert set(values) == {"images", "functionNamespace", "auth", "kubernetesApi", "gateway", "serviceAccount", "queue",
                           "networkPolicy"}


def test_notes_tell_how_to_log_in_and_stream(helm: Path, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", **{v: str(tmp_path / v.lower()) for v in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME")}}
    done = helm_run(helm, "install", "rel", str(CHART), "--namespace", "sf-system", "--dry-run=client", env=env)
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "svc/rel-streamfaas-gateway" in notes
    assert "get secret rel-streamfaas-auth -o jsonpath='{.data.password}'" in notes
    assert "streamfaas login --username admin --password-stdin" in notes
    assert "streamfaas invoke" in notes
