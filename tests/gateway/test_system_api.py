"""The /system REST API with OpenFaaS's routes, JSON and status codes, behind basic auth."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from platform_fixture import Platform

SYSTEM_ROUTES = [
    ("GET", "/system/functions"),
    ("POST", "/system/functions"),
    ("PUT", "/system/functions"),
    ("DELETE", "/system/functions"),
    ("GET", "/system/function/x"),
    ("POST", "/system/scale-function/x"),
    ("GET", "/system/secrets"),
    ("POST", "/system/secrets"),
    ("PUT", "/system/secrets"),
    ("DELETE", "/system/secrets"),
    ("GET", "/system/info"),
    ("GET", "/system/namespaces"),
    ("GET", "/system/logs?name=x"),
    ("GET", "/system/function-token/x"),
    ("GET", "/ui/"),
]


@pytest.mark.parametrize(("method", "path"), SYSTEM_ROUTES)
@pytest.mark.parametrize("auth", [None, ("admin", "wrong"), ("root", "x")])
def test_every_system_route_needs_auth(shared_platform: Platform, method: str, path: str, auth: tuple[str, str] | None) -> None:
    r = httpx.request(method, shared_platform.url + path, auth=auth, json={}, timeout=10)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Basic realm=")


def test_public_routes_need_no_auth(shared_platform: Platform) -> None:
    assert httpx.get(shared_platform.url + "/healthz").status_code == 200
    assert httpx.get(shared_platform.url + "/metrics").status_code == 200
    assert httpx.get(shared_platform.url + "/openapi.json").json()["paths"]["/system/functions"]
    assert httpx.post(shared_platform.url + "/function/missing").status_code == 404


def test_password_file_is_owner_only(shared_platform: Platform) -> None:
    path = shared_platform.state_dir / "auth" / "admin-password"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(shared_platform.password) >= 24


def test_info_namespaces_and_empty_lists(shared_platform: Platform) -> None:
    http = shared_platform.http
    info = http.get(shared_platform.url + "/system/info").json()
    assert info["provider"]["orchestration"] == "local"
    assert info["version"]["release"]
    assert http.get(shared_platform.url + "/system/namespaces").json() == ["openfaas-fn"]
    assert http.get(shared_platform.url + "/system/functions?namespace=other").status_code == 400


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("POST", "/system/functions", b"", 400, "body is empty"),
        ("POST", "/system/functions", b"{not json", 400, "invalid JSON"),
        ("POST", "/system/functions", b"[1]", 400, "expected an object"),
        ("POST", "/system/functions", b'{"image": "x"}', 400, "service"),
        ("POST", "/system/functions", b'{"service": "Bad_Name", "image": "x"}', 400, "invalid function name"),
        ("POST", "/system/functions", b'{"service": "ok", "image": "never-built:1"}', 400, "image 'never-built:1' not found"),
        ("POST", "/system/functions", b'{"service": "ok", "image": "x", "secrets": ["nope"]}', 400, "secret(s) not found: nope"),
        ("PUT", "/system/functions", b'{"service": "absent", "image": "x"}', 404, "not found"),
        ("DELETE", "/system/functions", b'{"functionName": "absent"}', 404, "not found"),
        ("DELETE", "/system/functions", b'{"name": "x"}', 400, "functionName"),
        ("GET", "/system/function/absent", None, 404, "function 'absent' not found"),
        ("POST", "/system/scale-function/absent", b'{"replicas": 1}', 404, "not found"),
        ("POST", "/system/scale-function/absent", b'{"replicas": -1}', 400, "replicas"),
        ("POST", "/system/scale-function/a", b'{"serviceName": "b", "replicas": 1}', 400, "does not match"),
        ("GET", "/system/logs", None, 400, "name"),
        ("GET", "/system/logs?name=absent", None, 404, "not found"),
        ("GET", "/system/logs?name=absent&tail=x", None, 400, "tail"),
        ("POST", "/system/secrets", b'{"name": "a b", "value": "v"}', 400, "invalid secret name"),
        ("POST", "/system/secrets", b'{"name": "s"}', 400, "value or rawValue"),
        ("POST", "/system/secrets", b'{"name": "s", "rawValue": "%%%"}', 400, "base64"),
        ("PUT", "/system/secrets", b'{"name": "absent", "value": "v"}', 404, "not found"),
        ("DELETE", "/system/secrets", b'{"name": "absent"}', 404, "not found"),
    ],
)
def test_error_paths(shared_platform: Platform, method: str, path: str, body: bytes | None, status: int, needle: str) -> None:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    r = shared_platform.http.request(method, shared_platform.url + path, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert needle in r.text
    assert r.text.count("\n") == 1 and "Traceback" not in r.text


def test_deploy_list_get_update_scale_delete(platform: Platform, tmp_path: Path) -> None:
    handler = platform.write_function(tmp_path, "crud", "def handle(req):\n    return 'hi'\n")
    platform.images.build("crud:1.0", "python3-flask", handler)
    http, url = platform.http, platform.url
    body = {
        "service": "crud", "image": "crud:1.0", "envVars": {"A": "1"}, "labels": {"team": "x"},
        "annotations": {"note": "y"}, "limits": {"memory": "128M"}, "registryAuth": "ignored",
    }
    assert http.post(url + "/system/functions", json=body).status_code == 202
    platform.wait_ready("crud")
    [entry] = http.get(url + "/system/functions").json()
    for key in ("name", "image", "replicas", "availableReplicas", "envProcess", "labels", "annotations", "namespace", "createdAt"):
        assert key in entry
    assert "invocationCount" not in entry  # 0, which faas-provider's omitempty leaves out
    assert entry["name"] == "crud" and entry["image"] == "crud:1.0" and entry["namespace"] == "openfaas-fn"
    assert entry["labels"] == {"team": "x", "faas_function": "crud"}
    assert entry["limits"] == {"memory": "128M"}
    assert entry["envProcess"] == "python index.py"
    # A second POST (a duplicate deploy) updates the function; so does PUT.
    assert http.post(url + "/system/functions", json={**body, "envVars": {"A": "2"}}).status_code == 202
    assert http.put(url + "/system/functions", json={**body, "envVars": {"A": "3"}}).status_code == 202
    status = http.get(url + "/system/function/crud").json()
    assert status["envVars"] == {"A": "3"}
    assert status["createdAt"] == entry["createdAt"]
    assert http.post(url + "/system/scale-function/crud", json={"serviceName": "crud", "replicas": 2}).status_code == 202
    platform.wait_ready("crud", replicas=2)
    assert http.request("DELETE", url + "/system/functions", json={"functionName": "crud"}).status_code == 202
    assert http.get(url + "/system/functions").json() == []


def test_secret_crud_and_in_use_conflict(platform: Platform, tmp_path: Path) -> None:
    http, url = platform.http, platform.url
    assert http.post(url + "/system/secrets", json={"name": "api-key", "value": "s3cr3t-value"}).status_code == 201
    assert http.post(url + "/system/secrets", json={"name": "api-key", "value": "again"}).status_code == 409
    raw = base64.b64encode(b"\x00\xffbinary").decode()
    assert http.post(url + "/system/secrets", json={"name": "blob", "rawValue": raw}).status_code == 201
    assert http.get(url + "/system/secrets").json() == [
        {"name": "api-key", "namespace": "openfaas-fn"},
        {"name": "blob", "namespace": "openfaas-fn"},
    ]
    stored = platform.state_dir / "secrets" / "blob"
    assert stored.read_bytes() == b"\x00\xffbinary"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert stored.parent.stat().st_mode & 0o777 == 0o700
    handler = platform.write_function(tmp_path, "user", "def handle(req):\n    return 'x'\n")
    platform.images.build("user:latest", "python3-flask", handler)
    r = http.post(url + "/system/functions", json={"service": "user", "image": "user:latest", "secrets": ["api-key"]})
    assert r.status_code == 202
    r = http.request("DELETE", url + "/system/secrets", json={"name": "api-key"})
    assert r.status_code == 409
    assert "used by user" in r.text
    assert "s3cr3t" not in r.text
    assert http.put(url + "/system/secrets", json={"name": "api-key", "value": "rotated"}).status_code == 200
    assert (platform.state_dir / "run" / "user" / "secrets" / "api-key").read_text() == "rotated"
    assert http.request("DELETE", url + "/system/secrets", json={"name": "blob"}).status_code == 200
    assert [s["name"] for s in http.get(url + "/system/secrets").json()] == ["api-key"]
