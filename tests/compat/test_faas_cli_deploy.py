"""``faas-cli deploy`` and the certifier's Test_Deploy_MetaData: what a deploy may send, and the
function status that comes back (faas-provider's FunctionStatus, omitempty fields left out)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from go_wire import DEFAULT_NAMESPACE, DEPLOY_OK, go_json, go_time
from platform_fixture import Platform

HANDLER = "def handle(req):\n    return req\n"


@pytest.fixture(scope="module")
def image(shared_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = shared_platform.write_function(tmp_path_factory.mktemp("fn"), "meta", HANDLER)
    shared_platform.images.build("meta:1", "python3-flask", folder)
    yield "meta:1"


def _deploy(platform: Platform, body: dict[str, Any], method: str = "POST") -> httpx.Response:
    return platform.http.request(method, f"{platform.url}/system/functions", content=go_json(body),
                                 headers={"Content-Type": "application/json", "User-Agent": "faas-cli/dev"})


def _listed(platform: Platform, name: str) -> dict[str, Any]:
    r = platform.http.get(f"{platform.url}/system/functions", params={"namespace": DEFAULT_NAMESPACE})
    assert r.status_code == 200
    [entry] = [f for f in r.json() if f["name"] == name]
    return entry


def test_null_maps_lists_and_resources_are_taken_as_empty(shared_platform: Platform, image: str) -> None:
    # Older faas-cli releases, and Go clients with nil maps and slices, send null.
    body = {
        "service": "nulls", "image": image, "namespace": DEFAULT_NAMESPACE, "envProcess": None,
        "envVars": None, "constraints": None, "secrets": None, "labels": None, "annotations": None,
        "limits": None, "requests": None, "readOnlyRootFilesystem": None,
    }
    r = _deploy(shared_platform, body)
    assert r.status_code in DEPLOY_OK, r.text
    shared_platform.wait_ready("nulls")
    r = _deploy(shared_platform, body, method="PUT")  # faas-cli deploy tries PUT first
    assert r.status_code in DEPLOY_OK, r.text
    entry = _listed(shared_platform, "nulls")
    assert entry["labels"] == {"faas_function": "nulls"} and entry["annotations"] == {}


def test_status_leaves_out_empty_omitempty_fields(shared_platform: Platform, image: str) -> None:
    # The certifier's first case: no env, labels or annotations ({} for both, as its Go maps are
    # set but empty), and it compares envVars, constraints, secrets, requests with reflect.DeepEqual
    # against the nil it sent.
    body = {"service": "stronghash", "image": image, "namespace": DEFAULT_NAMESPACE, "envProcess": "python index.py",
            "labels": {}, "annotations": {}}
    assert _deploy(shared_platform, body).status_code in DEPLOY_OK
    shared_platform.wait_ready("stronghash")
    for entry in (_listed(shared_platform, "stronghash"),
                  shared_platform.http.get(f"{shared_platform.url}/system/function/stronghash", params={"namespace": DEFAULT_NAMESPACE}).json()):
        assert set(entry) == {"name", "image", "namespace", "envProcess", "labels", "annotations", "replicas", "availableReplicas", "createdAt"}
        assert entry["labels"] == {"faas_function": "stronghash"} and entry["annotations"] == {}
        assert entry["replicas"] == 1 and entry["availableReplicas"] == 1
        go_time(entry["createdAt"])


def test_status_keeps_what_was_set(shared_platform: Platform, image: str) -> None:
    # The certifier's "with labels", "with annotations" and "with memory limit" cases, together.
    body = {
        "service": "everything", "image": image, "namespace": DEFAULT_NAMESPACE, "envProcess": "python index.py",
        "envVars": {"A": "1"}, "labels": {"canary_build": "true"}, "annotations": {"some-json": '{"a": [1]}'},
        "limits": {"memory": "5Mi", "cpu": "100m"}, "requests": {"memory": "1Mi"}, "readOnlyRootFilesystem": True,
    }
    assert _deploy(shared_platform, body).status_code in DEPLOY_OK
    shared_platform.wait_ready("everything")
    r = httpx.post(shared_platform.function_url("everything"), content=b"x", timeout=30)
    assert r.status_code == 200
    entry = _listed(shared_platform, "everything")
    assert entry["envVars"] == {"A": "1"}
    assert entry["labels"] == {"canary_build": "true", "faas_function": "everything"}
    assert entry["annotations"] == {"some-json": '{"a": [1]}'}
    assert entry["limits"] == {"memory": "5Mi", "cpu": "100m"}
    assert entry["requests"] == {"memory": "1Mi"}  # cpu: "" is omitempty
    assert entry["readOnlyRootFilesystem"] is True
    assert entry["invocationCount"] == 1
    assert "constraints" not in entry and "secrets" not in entry


def test_scaled_to_zero_leaves_out_the_counts(shared_platform: Platform, image: str) -> None:
    body = {"service": "idle", "image": image, "labels": {"com.openfaas.scale.min": "0"}}
    assert _deploy(shared_platform, body).status_code in DEPLOY_OK
    entry = _listed(shared_platform, "idle")
    assert "replicas" not in entry and "availableReplicas" not in entry and "invocationCount" not in entry
