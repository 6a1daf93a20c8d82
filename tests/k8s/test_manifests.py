"""The kubernetes provider's pure parts, with no cluster: objects made from a request and read
back, start errors from pod statuses, ready addresses from Endpoints, the least-loaded pick and
kubelet log lines. (What the API server makes of them is tested in test_provider_objects.py.)"""

from __future__ import annotations

import datetime as dt
from typing import Any

import aiohttp
import pytest

pytest.importorskip("kubernetes_asyncio", reason="the kubernetes extra is not installed (pip install -e '.[kubernetes]')")

from streamfaas.errors import BadRequest  # noqa: E402
from streamfaas.provider.kubernetes._endpoints import EndpointTable, ready_addresses  # noqa: E402
from streamfaas.provider.kubernetes._logs import parse_line  # noqa: E402
from streamfaas.provider.kubernetes._objects import (  # noqa: E402
    deployment_manifest,
    deployment_request,
    pod_start_error,
)
from streamfaas.provider.models import FunctionDeployment  # noqa: E402


def _deployment(**fields: Any) -> FunctionDeployment:
    return FunctionDeployment.model_validate({"service": "fn", "image": "reg/fn:1", **fields})


def test_the_request_is_read_back_whole_from_the_deployment() -> None:
    d = _deployment(envProcess="python x.py", envVars={"A": "1"}, labels={"l": "v"}, annotations={"a": "b"},
                    secrets=["s"], limits={"memory": "1Gi"}, readOnlyRootFilesystem=True)
    obj = deployment_manifest(d, "ns", replicas=1)
    assert deployment_request(obj) == d
    obj["metadata"]["name"] = "other"  # an annotation copied onto another Deployment is not its request
    assert deployment_request(obj) is None


def test_the_function_cannot_override_the_platform_settings_of_its_watchdog() -> None:
    obj = deployment_manifest(_deployment(envVars={"port": "9", "STREAMFAAS_WATCHDOG_HOST": "127.0.0.1", "B": "2"}), "ns", replicas=1)
    env = [(e["name"], e["value"]) for e in obj["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert ("port", "8080") in env and ("port", "9") not in env
    assert ("STREAMFAAS_WATCHDOG_HOST", "0.0.0.0") in env and ("B", "2") in env
    assert ("STREAMFAAS_SHUTDOWN_DELAY", "2s") in env  # serves on while the gateways' watches catch up
    assert len({name for name, _ in env}) == len(env)


@pytest.mark.parametrize("quantity", ["lots", "-1", "1 Gi", "1GB"])
def test_a_bad_resource_quantity_is_a_bad_request_naming_it(quantity: str) -> None:
    with pytest.raises(BadRequest, match=r"limits\.memory"):
        deployment_manifest(_deployment(limits={"memory": quantity}), "ns", replicas=1)


def test_key_value_constraints_become_the_pods_node_selector() -> None:
    d = _deployment(constraints=["node.example.com/pool=untrusted", " disktype = ssd ", "kubernetes.io/arch=amd64", "empty="])
    spec = deployment_manifest(d, "ns", replicas=1)["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"node.example.com/pool": "untrusted", "disktype": "ssd", "kubernetes.io/arch": "amd64", "empty": ""}
    assert "nodeSelector" not in deployment_manifest(_deployment(), "ns", replicas=1)["spec"]["template"]["spec"]


@pytest.mark.parametrize("constraint", [
    "pool", "pool==untrusted", "node.platform.os == linux", "=x", "pool=a=b", "pool=not a value", "Bad.Domain/pool=x",
    f"pool={'x' * 64}", "a=1\nb=2",
])
def test_a_constraint_that_is_not_key_value_is_a_bad_request_naming_it(constraint: str) -> None:
    # Dropping it (as faas-netes does with anything but one "=") would run the function on any node.
    with pytest.raises(BadRequest, match="constraints") as refused:
        deployment_manifest(_deployment(constraints=[constraint]), "ns", replicas=1)
    assert repr(constraint) in str(refused.value)
    with pytest.raises(BadRequest, match="contradicts"):
        deployment_manifest(_deployment(constraints=["pool=a", "pool=b"]), "ns", replicas=1)


def test_start_errors_come_from_stuck_container_states() -> None:
    def pod(state: dict[str, Any], last: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"status": {"containerStatuses": [{"state": state, "lastState": last or {}}]}}

    assert pod_start_error(pod({"waiting": {"reason": "ContainerCreating"}})) == ""
    assert pod_start_error(pod({"running": {}})) == ""
    assert pod_start_error(pod({"waiting": {"reason": "ErrImagePull", "message": "pull failed"}})) == "ErrImagePull: pull failed"
    crash = pod({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}, {"terminated": {"exitCode": 3, "reason": "Error"}})
    assert pod_start_error(crash) == "CrashLoopBackOff: exit code 3 (Error)"
    unschedulable = {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes"}]}}
    assert pod_start_error(unschedulable) == "Unschedulable: 0/1 nodes"


def _endpoints(*pods: tuple[str, str], not_ready: tuple[str, str] | None = None) -> dict[str, Any]:
    subset: dict[str, Any] = {
        "addresses": [{"ip": ip, "targetRef": {"kind": "Pod", "name": name}} for name, ip in pods],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }
    if not_ready:
        subset["notReadyAddresses"] = [{"ip": not_ready[1], "targetRef": {"name": not_ready[0]}}]
    return {"metadata": {"namespace": "ns", "name": "fn"}, "subsets": [subset]}


def test_only_ready_addresses_are_endpoints() -> None:
    obj = _endpoints(("fn-a", "10.244.0.5"), not_ready=("fn-b", "10.244.0.6"))
    assert ready_addresses(obj) == [("fn-a", "http://10.244.0.5:8080")]


async def test_the_least_loaded_pod_is_picked_and_keeps_its_count_across_updates() -> None:
    async with aiohttp.ClientSession() as session:
        table = EndpointTable(session)
        key = table.update(_endpoints(("fn-a", "10.244.0.5"), ("fn-b", "10.244.0.6")))
        first = table.pick(key)
        assert first is not None
        first.inflight += 1
        second = table.pick(key)
        assert second is not None and second is not first
        table.update(_endpoints(("fn-a", "10.244.0.5"), ("fn-b", "10.244.0.6"), ("fn-c", "10.244.0.7")))
        assert first in table.ready(key) and first.inflight == 1  # the same object: its count survives
        table.update({"metadata": {"namespace": "ns", "name": "fn"}, "subsets": []})
        assert table.pick(key) is None


def test_kubelet_log_lines_keep_their_time_and_pod() -> None:
    line = parse_line(b"2026-01-02T03:04:05.123456789Z hello world\n", "fn-abc")
    assert line is not None
    assert (line.instance, line.text) == ("fn-abc", "hello world")
    assert line.time == dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC).timestamp()
    assert parse_line(b"no stamp here\n", "fn-abc") is None
