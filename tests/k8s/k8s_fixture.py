"""The test Kubernetes cluster (``scripts/k8s-cluster.sh up``) as tests use it: its settings,
kubectl, throwaway namespaces, and gateways with the kubernetes provider. The fixtures over
these are in ``conftest.py`` beside this file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from platform_fixture import Platform

ENV_FILE = Path(os.environ.get("STREAMFAAS_K8S_ENV", "/var/tmp/streamfaas-k8s/env"))
CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
_EXPORT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def require_cluster() -> None:
    """Call at a test module's top. Outside CI, no cluster skips the module (with one line
    why); under CI a missing cluster fails the run, never a silent skip."""
    if ENV_FILE.is_file():
        return
    if CI:
        raise RuntimeError(f"CI=true but the test Kubernetes cluster is not up ({ENV_FILE} is missing): run scripts/k8s-cluster.sh up")
    pytest.skip(f"no test Kubernetes cluster ({ENV_FILE} missing; scripts/k8s-cluster.sh up)", allow_module_level=True)


def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    """The ``export NAME=VALUE`` lines of the cluster's env file (values optionally quoted)."""
    out = {}
    for line in path.read_text().splitlines():
        m = _EXPORT.match(line)
        if m:
            out[m.group(1)] = m.group(2).strip().strip("'\"")
    return out


@dataclass(frozen=True)
class K8sEnv:
    kubeconfig: Path
    registry: str  # host:port of the loopback registry the kubelet pulls from
    env: dict[str, str]


class Kubectl:
    def __init__(self, env: K8sEnv) -> None:
        exe = shutil.which("kubectl")
        assert exe, "kubectl is not on PATH"
        self.exe = exe
        self.kubeconfig = env.kubeconfig

    def run(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([self.exe, "--kubeconfig", str(self.kubeconfig), *args], capture_output=True, text=True,
                           timeout=60, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return r

    def get(self, kind: str, name: str = "", *, namespace: str = "", selector: str = "") -> Any:
        """The object (or list) as JSON; None when a named one does not exist."""
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        if selector:
            args += ["-l", selector]
        r = self.run(*args, check=False)
        if r.returncode != 0:
            if "NotFound" in r.stderr:
                return None
            raise AssertionError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return json.loads(r.stdout)


def make_namespace(kubectl: Kubectl, prefix: str = "sf-test") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", name)
    kubectl.run("label", "namespace", name, "openfaas=1")
    return name


def delete_namespace(kubectl: Kubectl, name: str) -> None:
    # --wait=false: the namespace controller finishes the removal; nothing of the test waits on it.
    kubectl.run("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


class K8sGateway(Platform):
    """A gateway process with the kubernetes provider (functions in ``namespace``)."""

    def __init__(self, state_dir: Path, env: K8sEnv, namespace: str, extra_args: tuple[str, ...] = (), *,
                 kubeconfig: Path | None = None) -> None:
        # kubeconfig: another identity than the cluster admin's (e.g. a service account's token)
        args = ("--provider", "kubernetes", "--kubeconfig", str(kubeconfig or env.kubeconfig), "--namespace", namespace, *extra_args)
        super().__init__(state_dir, args)
        self.namespace = namespace

    def deploy_image(self, name: str, image: str, **fields: Any) -> None:
        """POST /system/functions with an image that is already in a registry."""
        r = self.http.post(f"{self.url}/system/functions", json={"service": name, "image": image, **fields})
        assert r.status_code == 202, r.text


def load_env() -> K8sEnv:
    values = read_env_file()
    kubeconfig = Path(values.get("KUBECONFIG", ""))
    assert kubeconfig.is_file(), f"{ENV_FILE}: KUBECONFIG={kubeconfig} is not a file"
    return K8sEnv(kubeconfig=kubeconfig, registry=values.get("STREAMFAAS_K8S_REGISTRY", ""), env=values)
