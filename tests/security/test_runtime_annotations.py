"""Annotations a container runtime reads off a pod (CRI-O's, containerd's, Kata's, gVisor's,
Podman's) are refused at deploy, as Kubernetes' own are: on Kubernetes a deployment's
annotations go onto its pods, and some of these loosen one (a host user namespace, a host
device)."""

from __future__ import annotations

import pytest

from platform_fixture import Platform
from streamfaas.provider.models import FunctionDeployment


@pytest.mark.parametrize("key", [
    "io.kubernetes.cri-o.userns-mode",  # "host": the pod in the host's user namespace
    "io.kubernetes.cri-o.Devices",  # a host device in the container
    "IO.Kubernetes.CRI-O.TrySkipVolumeSELinuxLabel",
    "io.kubernetes.cri.rdt-class",
    "io.containerd.cri.runtime-handler",
    "io.katacontainers.config.hypervisor.kernel_params",
    "dev.gvisor.spec.mount.shared.share",
    "io.podman.annotations.userns",
    "cpu-quota.crio.io",  # a domain with no slash
    "seccomp-profile.kubernetes.cri-o.io/fn",
    "irq-load-balancing.crio.io/x",
    "devices.noderesource.dev/container.fn",  # NRI's device injector: a host device
    "mounts.noderesource.dev/container.fn",
    "example.nri.io/x",
])
def test_container_runtime_annotation_keys_are_400(shared_platform: Platform, key: str) -> None:
    p = shared_platform
    r = p.http.post(f"{p.url}/system/functions", json={"service": "runtimebad", "image": "any:latest", "annotations": {key: "host"}})
    assert r.status_code == 400, r.text
    assert "annotations" in r.text and "container runtime's" in r.text and key in r.text
    assert p.http.get(f"{p.url}/system/function/runtimebad").status_code == 404


@pytest.mark.parametrize("key", ["io.example/kubernetes", "example.com/io.kubernetes.x", "topic", "prometheus.io.scrape"])
def test_other_annotation_keys_that_only_look_alike_are_kept(key: str) -> None:
    d = FunctionDeployment.model_validate({"service": "fine", "image": "any:latest", "annotations": {key: "v"}})
    assert d.annotations == {key: "v"}
