"""Hostile input on /system: names that end in a newline, and JSON nested to exhaust the stack."""

from __future__ import annotations

import pytest

from platform_fixture import Platform

JSON = {"Content-Type": "application/json"}

# Every /system route that reads a JSON body.
BODY_ROUTES = [
    ("POST", "/system/functions"),
    ("PUT", "/system/functions"),
    ("DELETE", "/system/functions"),
    ("POST", "/system/scale-function/nested"),
    ("POST", "/system/secrets"),
    ("PUT", "/system/secrets"),
    ("DELETE", "/system/secrets"),
    ("POST", "/system/queue/retry"),
]
DEPTH = 100_000


def test_function_name_with_trailing_newline_is_refused(shared_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> None:
    p = shared_platform
    handler = p.write_function(tmp_path_factory.mktemp("newl"), "newl", "def handle(req):\n    return req\n")
    p.images.build("newl:latest", "python3-flask", handler)
    for method in ("POST", "PUT"):
        r = p.http.request(method, f"{p.url}/system/functions", json={"service": "newl\n", "image": "newl:latest"})
        assert r.status_code == 400, r.text
        assert "invalid function name" in r.text
    names = [f["name"] for f in p.http.get(f"{p.url}/system/functions").json()]
    assert not any(n.startswith("newl") for n in names)


def test_secret_name_with_trailing_newline_is_refused(shared_platform: Platform) -> None:
    p = shared_platform
    for method in ("POST", "PUT", "DELETE"):
        r = p.http.request(method, f"{p.url}/system/secrets", json={"name": "tok\n", "value": "v"})
        assert r.status_code == 400, (method, r.text)
        assert "invalid secret name" in r.text
    assert [s["name"] for s in p.http.get(f"{p.url}/system/secrets").json()] == []


@pytest.mark.parametrize("body", [
    b"[" * DEPTH + b"]" * DEPTH,
    b'{"a":' * DEPTH + b"1" + b"}" * DEPTH,
    b'{"service":' + b"[" * DEPTH + b"]" * DEPTH + b"}",
], ids=["arrays", "objects", "in-a-field"])
def test_deeply_nested_json_on_system_api_is_400(shared_platform: Platform, body: bytes) -> None:
    p = shared_platform
    for method, path in BODY_ROUTES:
        r = p.http.request(method, p.url + path, content=body, headers=JSON)
        assert r.status_code == 400, (method, path, r.status_code, r.text[:200])
        assert r.text == "invalid JSON: nested too deeply\n"
    assert p.http.get(f"{p.url}/healthz").text == "OK\n"
