"""The Helm chart on the real test cluster: a server-side dry run of what it renders, then
`helm install` with the platform's images from the cluster's registry, the CLI flow against
an in-cluster gateway, `helm upgrade`, and `helm uninstall`.

The release is brought up by pod IP, as a cluster without Service routing needs it (see
helm_install_fixture.py). Clients reach a gateway by its pod IP.

The tests run in order on one release; each names the step it proves."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest
from helm_install_fixture import (
    BASE_IMAGE,
    CHART,
    GATEWAY,
    PROBE,
    STREAM,
    Release,
    install,
    new_release,
    platform_images,
)
from httpx_sse import connect_sse
from k8s_fixture import K8sEnv, Kubectl, delete_namespace, make_namespace, require_cluster

from platform_fixture import REPO, wait_for

sys.path.insert(0, str(REPO / "tests" / "helm"))

from helm_fixture import load_all  # noqa: E402

require_cluster()
pytestmark = [pytest.mark.k8s, pytest.mark.helm, pytest.mark.timeout(300)]

SECRET_VALUE = f"helm-secret-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def images(k8s_env: K8sEnv) -> dict[str, str]:
    return platform_images(k8s_env.registry)


@pytest.fixture(scope="module")
def release(kubectl: Kubectl, k8s_env: K8sEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    with new_release(kubectl, k8s_env, tmp_path_factory.mktemp("helm-home")) as rel:
        yield rel


# ---- before the install -------------------------------------------------------------------------
def test_rendered_objects_pass_a_server_side_dry_run(release: Release) -> None:
    # Rendered for this cluster's version; the functions namespace named after one that exists
    # (made here, not the release's, which the chart refuses), since a dry run creates nothing
    # that the objects inside it could go into.
    version = json.loads(release.kubectl.run("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    functions = make_namespace(release.kubectl, "sf-dry")
    try:
        values = [v for v in release.values if not v.startswith("functionNamespace.name=")]
        values.append(f"functionNamespace.name={functions}")
        rendered = release.helm_cmd("template", release.name, str(CHART), "--namespace", release.namespace,
                                    "--kube-version", version, *[a for v in values for a in ("--set", v)]).stdout
        kinds = {o["kind"] for o in load_all(rendered)}
        assert kinds >= {"Namespace", "Deployment", "StatefulSet", "Service", "Secret", "Role", "ClusterRole",
                         "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount"}
        done = release.kubectl.run("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    finally:
        delete_namespace(release.kubectl, functions)
    assert done.returncode == 0, done.stderr
    assert "(server dry run)" in done.stdout
    assert release.kubectl.get("deployment", f"{release.fullname}-gateway", namespace=release.namespace) is None


# ---- install ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def installed(release: Release, images: dict[str, str]) -> Release:
    return install(release, images)


def test_install_runs_two_ready_gateways_from_the_registry(installed: Release, images: dict[str, str]) -> None:
    gateways = installed.pods(GATEWAY)
    assert len(gateways) == 2 and len(installed.ready_ips(GATEWAY)) == 2, installed.describe()
    for pod in gateways:
        assert pod["spec"]["containers"][0]["image"] == images["streamfaas"]
        assert pod["status"]["podIP"].startswith("10.244.")
        assert pod["spec"]["serviceAccountName"] == installed.fullname
    ns = installed.kubectl.get("namespace", installed.functions)
    assert ns["metadata"]["labels"]["openfaas"] == "1"
    for ip in installed.ready_ips(GATEWAY):
        assert httpx.get(f"http://{ip}:8080/healthz", timeout=10).status_code == 200
        assert httpx.get(f"http://{ip}:8080/system/functions", timeout=10).status_code == 401


# ---- the CLI flow against a gateway pod ---------------------------------------------------------
@pytest.fixture(scope="module")
def logged_in(installed: Release) -> str:
    url = installed.gateway_url()
    wrong = installed.cli("login", "--gateway", url, "--password-stdin", input="not-the-password\n")
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    done = installed.cli("login", "--gateway", url, "--password-stdin", input=installed.password() + "\n")
    assert done.returncode == 0, done.stderr
    return url


@pytest.fixture(scope="module")
def deployed(installed: Release, logged_in: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``hstream`` (the stream example) and ``hprobe`` (with a secret), published to the cluster's
    registry and deployed with the CLI."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "oci-base-image.sh")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path_factory.mktemp("helm-stack")
    shutil.copytree(STREAM, folder / "stream")
    shutil.copytree(PROBE, folder / "probe")
    tag = uuid.uuid4().hex[:8]
    (folder / "stack.yaml").write_text(
        "version: 1.0\nfunctions:\n"
        f"  hstream:\n    lang: python3-flask\n    handler: ./stream\n    image: helm-stream:{tag}\n"
        f"  hprobe:\n    lang: python3-flask\n    handler: ./probe\n    image: helm-probe:{tag}\n    secrets: [hsecret]\n"
    )
    stack = str(folder / "stack.yaml")
    reg = installed.env.registry
    done = installed.cli("publish", "-f", stack, "--registry", reg, "--base-image", BASE_IMAGE, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    done = installed.cli("secret", "create", "hsecret", url=logged_in, input=SECRET_VALUE)
    assert done.returncode == 0, done.stderr
    done = installed.cli("deploy", "-f", stack, "--registry", reg, "--timeout", "120s", url=logged_in)
    assert done.returncode == 0, done.stderr[-3000:]
    return logged_in


def _stream_answer() -> str:
    """The example's ANSWER constant, read from its source (the function runs in a pod)."""
    tree = ast.parse((STREAM / "handler.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ANSWER" for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise AssertionError("examples/stream/handler.py has no ANSWER")


def test_invoke_streams_the_answer_in_order(deployed: str) -> None:
    answer = _stream_answer()
    with httpx.Client(timeout=60) as client, connect_sse(client, "POST", f"{deployed}/function/hstream") as es:
        assert es.response.headers["content-type"].startswith("text/event-stream")
        events = list(es.iter_sse())
    assert events[-1].event == "done"
    assert "".join(json.loads(e.data)["content"] for e in events[:-1]) == answer


def test_cli_invoke_prints_the_stream(installed: Release, deployed: str) -> None:
    done = installed.cli("invoke", "hstream", url=deployed, input="")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == _stream_answer()


def test_function_reads_its_secret_and_no_log_shows_it(installed: Release, deployed: str) -> None:
    r = httpx.get(f"{deployed}/function/hprobe/secret", params={"name": "hsecret"}, timeout=60)
    assert r.status_code == 200 and r.text == SECRET_VALUE
    assert installed.kubectl.get("secret", "hsecret", namespace=installed.functions) is not None
    for pod in installed.pods("app.kubernetes.io/instance=" + installed.name):
        log = installed.kubectl.run("logs", pod["metadata"]["name"], "-n", installed.namespace, check=False).stdout
        assert SECRET_VALUE not in log and installed.password() not in log


def test_logs_show_what_the_function_printed(installed: Release, deployed: str) -> None:
    marker = f"helm-log-{uuid.uuid4().hex}"
    assert httpx.get(f"{deployed}/function/hprobe/log", params={"line": marker}, timeout=60).text == "logged"
    wait_for(lambda: marker in installed.cli("logs", "hprobe", url=deployed).stdout, 30, interval=0.5,
             what="the line in `streamfaas logs`")


def test_async_invocation_runs_through_nats_and_the_queue_worker(installed: Release, deployed: str) -> None:
    marker = f"helm-async-{uuid.uuid4().hex}"
    done = installed.cli("invoke", "hprobe", "--async", "--path", "log", "--query", f"line={marker}", url=deployed, input="")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()  # the call id
    wait_for(lambda: marker in installed.cli("logs", "hprobe", url=deployed).stdout, 60, interval=0.5,
             what="the queue worker to run the job")


def test_scale_to_zero_and_back(installed: Release, deployed: str) -> None:
    done = installed.cli("scale", "hprobe", "--replicas", "0", url=deployed)
    assert done.returncode == 0, done.stderr
    ns = installed.functions
    wait_for(lambda: not installed.kubectl.get("pods", namespace=ns, selector="faas_function=hprobe")["items"], 90,
             interval=0.5, what="hprobe's pods to go")
    woke = httpx.get(f"{deployed}/function/hprobe/whoami", timeout=90)
    assert woke.status_code == 200, woke.text
    assert json.loads(woke.text)["pod"].startswith("hprobe-")
    assert installed.kubectl.get("deployment", "hprobe", namespace=ns)["spec"]["replicas"] == 1


def test_remove_deletes_the_function(installed: Release, deployed: str) -> None:
    done = installed.cli("remove", "hstream", url=deployed)
    assert done.returncode == 0, done.stderr
    ns = installed.functions
    wait_for(lambda: installed.kubectl.get("deployment", "hstream", namespace=ns) is None
             and installed.kubectl.get("service", "hstream", namespace=ns) is None, 30, interval=0.2,
             what="hstream's objects to go")
    listed = installed.cli("list", "--json", url=deployed)
    assert [f["name"] for f in json.loads(listed.stdout)] == ["hprobe"]


# ---- RBAC ---------------------------------------------------------------------------------------
def test_gateways_may_read_secrets_only_in_the_functions_namespace(installed: Release) -> None:
    who = f"system:serviceaccount:{installed.namespace}:{installed.fullname}"

    def can(*args: str) -> str:
        return installed.kubectl.run("auth", "can-i", *args, "--as", who, check=False).stdout.strip()

    assert can("get", "secrets", "-n", installed.functions) == "yes"
    assert can("get", "secrets", "-n", "default") == "no"
    assert can("get", "secrets", "-n", installed.namespace) == "no"  # not even the admin password
    assert can("list", "secrets", "--all-namespaces") == "no"
    assert can("create", "deployments", "-n", "default") == "no"
    assert can("list", "namespaces") == "yes"


# ---- upgrade and uninstall ----------------------------------------------------------------------
def test_upgrade_keeps_the_admin_password_and_the_functions(installed: Release, deployed: str) -> None:
    before = installed.password()
    old = set(installed.ready_ips(GATEWAY))
    installed.deploy("upgrade", f"gateway.podAnnotations.upgraded={uuid.uuid4().hex[:8]}")
    installed.rollout("deployment", "gateway")
    assert installed.password() == before
    new = installed.ready_ips(GATEWAY)
    assert new and not set(new) & old  # new gateway pods, nothing of the old ones kept
    url = f"http://{new[0]}:8080"
    r = httpx.get(f"{url}/system/functions", auth=("admin", before), timeout=30)
    assert r.status_code == 200, r.text
    assert [f["name"] for f in r.json()] == ["hprobe"]
    assert httpx.get(f"{url}/function/hprobe/secret", params={"name": "hsecret"}, timeout=60).text == SECRET_VALUE


def test_uninstall_leaves_nothing_behind(installed: Release) -> None:
    installed.helm_cmd("uninstall", installed.name, "--namespace", installed.namespace, "--wait", "--timeout", "120s",
                       timeout=180)
    kinds = "deployments,statefulsets,replicasets,pods,services,endpoints,secrets,configmaps,serviceaccounts,roles,rolebindings,poddisruptionbudgets,networkpolicies,persistentvolumeclaims"

    def left() -> list[str]:
        items = installed.kubectl.get(kinds, namespace=installed.namespace)["items"]
        # What Kubernetes itself puts in every namespace: the default account (and its token).
        return [f"{o['kind']}/{o['metadata']['name']}" for o in items
                if not (o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "default")
                and not (o["kind"] == "Secret" and o["type"] == "kubernetes.io/service-account-token"
                         and o["metadata"].get("annotations", {}).get("kubernetes.io/service-account.name") == "default")
                and not (o["kind"] == "ConfigMap" and o["metadata"]["name"] == "kube-root-ca.crt")]

    wait_for(lambda: not left(), 60, interval=0.5, what="the release's objects to go")
    # The functions namespace was the chart's: it goes, with the functions in it.
    fns = installed.kubectl.get("namespace", installed.functions)
    assert fns is None or fns["metadata"].get("deletionTimestamp"), fns
    name = f"{installed.namespace}-{installed.fullname}-namespaces"
    assert installed.kubectl.get("clusterrole", name) is None
    assert installed.kubectl.get("clusterrolebinding", name) is None
    assert installed.helm_cmd("status", installed.name, "--namespace", installed.namespace, check=False).returncode != 0
