"""Fixtures for tests against the test Kubernetes cluster (``scripts/k8s-cluster.sh up``).

- ``k8s_env``: the cluster's settings, from ``/var/tmp/streamfaas-k8s/env`` (KUBECONFIG and the
  loopback registry). A test module calls ``k8s_fixture.require_cluster()`` at its top: it skips
  the module outside CI when the cluster is not up, and fails under CI.
- ``kubectl``: kubectl against that cluster (JSON out), for assertions on the objects.
- ``namespace``: a fresh namespace for one module, labelled ``openfaas=1``; deleted afterwards.
- ``k8s_gateway_factory`` / ``k8s_gateway``: real gateway processes with ``--provider kubernetes``
  on that namespace, stopped after the module.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from k8s_fixture import (  # noqa: E402
    K8sEnv,
    K8sGateway,
    Kubectl,
    delete_namespace,
    load_env,
    make_namespace,
)


@pytest.fixture(scope="session")
def k8s_env() -> K8sEnv:
    return load_env()


@pytest.fixture(scope="session")
def kubectl(k8s_env: K8sEnv) -> Kubectl:
    return Kubectl(k8s_env)


@pytest.fixture(scope="module")
def namespace(kubectl: Kubectl) -> Iterator[str]:
    name = make_namespace(kubectl)
    try:
        yield name
    finally:
        delete_namespace(kubectl, name)


@pytest.fixture(scope="module")
def k8s_gateway_factory(tmp_path_factory: pytest.TempPathFactory, k8s_env: K8sEnv, namespace: str) -> Iterator[Callable[..., K8sGateway]]:
    """Start gateways on the module's namespace (each with its own state dir); all are stopped after."""
    started: list[K8sGateway] = []

    def start(*extra_args: str, kubeconfig: Path | None = None) -> K8sGateway:
        gw = K8sGateway(tmp_path_factory.mktemp("k8s-gateway"), k8s_env, namespace, extra_args, kubeconfig=kubeconfig)
        started.append(gw)
        gw.start()
        return gw

    try:
        yield start
    finally:
        for gw in started:
            gw.close()


@pytest.fixture(scope="module")
def k8s_gateway(k8s_gateway_factory: Callable[..., K8sGateway]) -> K8sGateway:
    """One gateway for the module, with a short cold-start timeout."""
    return k8s_gateway_factory("--cold-start-timeout", "20s")
