"""The Helm chart installed on the real test cluster, for the tests that need a release: its
images, a release in a namespace of its own (removed afterwards whatever happened), the
install in the order a cluster without Service routing needs, and functions published to the
cluster's registry.

The test cluster has no kube-proxy and no cluster DNS: Services route nowhere, and the chart's
default addresses (Service names) resolve nowhere. So the release is brought up with each
address given by pod IP as it becomes known: NATS first (no gateways yet), then the gateways
told the NATS pod's address and the API server's, then the queue worker told the gateway pods'
addresses. Clients reach a gateway by its pod IP."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from k8s_fixture import CI, K8sEnv, Kubectl, delete_namespace

from platform_fixture import REPO, streamfaas_cmd, wait_for

sys.path.insert(0, str(REPO / "tests" / "helm"))

from helm_fixture import CHART, helm_run, require_helm  # noqa: E402

BASE_IMAGE = "localhost/streamfaas-pybase:bookworm"
PROBE = REPO / "tests" / "k8s" / "functions" / "probe"
STREAM = REPO / "examples" / "stream"
GATEWAY = "app.kubernetes.io/component=gateway"
NATS = "app.kubernetes.io/component=nats"


@dataclass
class Release:
    """One release of the chart on the test cluster, and how the tests reach it."""

    helm: Path
    kubectl: Kubectl
    env: K8sEnv
    name: str
    namespace: str  # the release's
    functions: str  # the functions namespace (the chart makes it)
    home: Path  # helm's and the CLI's config folders
    values: list[str] = field(default_factory=list)

    @property
    def fullname(self) -> str:
        return f"{self.name}-streamfaas"

    def helm_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            env[var] = str(self.home / var.lower())
        return env

    def helm_cmd(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return helm_run(self.helm, *args, "--kubeconfig", str(self.env.kubeconfig), check=check, timeout=timeout,
                        env=self.helm_env())

    def deploy(self, verb: str, *sets: str) -> None:
        """``helm install`` or ``helm upgrade`` with the values so far and ``sets`` added."""
        self.values += sets
        args = [verb, self.name, str(CHART), "--namespace", self.namespace]
        if verb == "upgrade":
            args.append("--reuse-values")
        for value in self.values if verb == "install" else sets:
            args += ["--set", value]
        self.helm_cmd(*args)

    def rollout(self, kind: str, name: str, timeout: int = 150) -> None:
        # Not Kubectl.run: its own time limit is shorter than a rollout may take.
        r = subprocess.run([self.kubectl.exe, "--kubeconfig", str(self.env.kubeconfig), "rollout", "status",
                            f"{kind}/{self.fullname}-{name}", "-n", self.namespace, f"--timeout={timeout}s"],
                           capture_output=True, text=True, timeout=timeout + 30, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"{kind} {name} did not roll out: {r.stderr.strip()}\n{self.describe()}"

    def describe(self) -> str:
        pods = self.kubectl.get("pods", namespace=self.namespace)["items"]
        return "\n".join(f"{p['metadata']['name']}: {p['status'].get('phase')} "
                         f"{[c.get('state') for c in p['status'].get('containerStatuses') or []]}" for p in pods)

    def pods(self, selector: str) -> list[dict[str, Any]]:
        items = self.kubectl.get("pods", namespace=self.namespace, selector=selector)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def ready_ips(self, selector: str) -> list[str]:
        return [p["status"]["podIP"] for p in self.pods(selector)
                if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])]

    def password(self) -> str:
        secret = self.kubectl.get("secret", f"{self.fullname}-auth", namespace=self.namespace)
        return base64.b64decode(secret["data"]["password"]).decode()

    def gateway_url(self) -> str:
        ips = wait_for(lambda: self.ready_ips(GATEWAY), 60, interval=0.2, what="a ready gateway pod")
        return f"http://{ips[0]}:8080"

    def cli(self, *args: str, url: str = "", input: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, OPENFAAS_CONFIG=str(self.home / "openfaas"), STREAMFAAS_STATE_DIR=str(self.home / "state"))
        if url:
            env["OPENFAAS_URL"] = url
        return subprocess.run(streamfaas_cmd(*args), capture_output=True, text=True, env=env, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL, timeout=timeout)


def api_address(env: K8sEnv) -> tuple[str, str]:
    """The API server's address as pods reach it (host, port), from the cluster's env file."""
    host, port = env.env.get("STREAMFAAS_K8S_API_HOST", ""), env.env.get("STREAMFAAS_K8S_API_PORT", "")
    if host and port:
        return host, port
    why = "the test cluster's API server is not reachable from pods (no STREAMFAAS_K8S_API_HOST/PORT in its env file)"
    if CI:
        raise RuntimeError(f"CI=true but {why}: restart it with scripts/k8s-cluster.sh")
    pytest.skip(why)


def platform_images(registry: str) -> dict[str, str]:
    """The platform's images, built (cached by content) and pushed to ``registry``."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "platform-images.sh"), "--registry", registry],
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    refs = dict(line.split("=", 1) for line in done.stdout.split())
    assert set(refs) == {"streamfaas", "nats"}, done.stdout
    return refs


@contextmanager
def new_release(kubectl: Kubectl, env: K8sEnv, home: Path, *, name: str = "h", namespace: str = "sf-helm") -> Iterator[Release]:
    """A release (NAME + a random suffix) in a namespace made here (NAMESPACE-suffix), and a
    functions namespace the chart will make (NAMESPACE-fn-suffix); both, and anything
    cluster-wide of the release, are deleted afterwards whatever happened."""
    helm = require_helm()
    host, port = api_address(env)
    suffix = uuid.uuid4().hex[:8]
    rel = Release(helm=helm, kubectl=kubectl, env=env, name=f"{name}{suffix}", namespace=f"{namespace}-{suffix}",
                  functions=f"{namespace}-fn-{suffix}", home=home)
    rel.values = [f"functionNamespace.name={rel.functions}", f"kubernetesApi.host={host}", f"kubernetesApi.port={port}",
                  "queue.enabled=true", "queue.nats.persistence.enabled=false", "networkPolicy.enabled=true"]
    kubectl.run("create", "namespace", rel.namespace)
    try:
        yield rel
    finally:
        rel.helm_cmd("uninstall", rel.name, "--namespace", rel.namespace, check=False)
        delete_namespace(kubectl, rel.functions)
        delete_namespace(kubectl, rel.namespace)
        name = f"{rel.namespace}-{rel.fullname}-namespaces"
        kubectl.run("delete", "clusterrolebinding,clusterrole", name, "--ignore-not-found", check=False)


def install(release: Release, images: dict[str, str], *, worker_gateways: str = "one") -> Release:
    """Install the chart with ``images``: NATS, then 2 gateways, then 1 queue worker that runs
    jobs through one gateway pod (``worker_gateways="one"``) or through both (``"all"``)."""
    reg = release.env.registry
    release.values += [f"images.registry={reg}", f"images.streamfaas.tag={images['streamfaas'].rsplit(':', 1)[1]}",
                       f"images.nats.tag={images['nats'].rsplit(':', 1)[1]}"]
    release.deploy("install", "gateway.replicas=0", "queue.worker.replicas=0")
    release.rollout("statefulset", "nats")
    nats_ip = release.ready_ips(NATS)[0]
    release.deploy("upgrade", "gateway.replicas=2", f"queue.natsUrl=nats://{nats_ip}:4222")
    release.rollout("deployment", "gateway")
    if worker_gateways == "all":
        urls = ",".join(f"http://{ip}:8080" for ip in sorted(release.ready_ips(GATEWAY)))
        gateways = f"queue.worker.gatewayUrls={{{urls}}}"
    else:
        gateways = f"queue.worker.gatewayUrl={release.gateway_url()}"
    release.deploy("upgrade", "queue.worker.replicas=1", gateways)
    release.rollout("deployment", "queue-worker")
    return release


def publish(release: Release, functions: dict[str, Path], folder: Path) -> dict[str, str]:
    """Build each function (name: its handler folder) on the project's base image and push it
    to the cluster's registry with ``streamfaas publish``: name -> the image reference."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "oci-base-image.sh")], capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    tag = uuid.uuid4().hex[:8]
    stack = "version: 1.0\nfunctions:\n"
    for name, handler in functions.items():
        shutil.copytree(handler, folder / name)
        stack += f"  {name}:\n    lang: python3-flask\n    handler: ./{name}\n    image: {name}:{tag}\n"
    (folder / "stack.yaml").write_text(stack)
    reg = release.env.registry
    done = release.cli("publish", "-f", str(folder / "stack.yaml"), "--registry", reg, "--base-image", BASE_IMAGE,
                       timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: f"{reg}/{name}:{tag}" for name in functions}
