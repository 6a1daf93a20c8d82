"""RFC 7617 / RFC 9110: the auth scheme's name is case-insensitive, for the admin's Basic and a
private function's Bearer alike."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from platform_fixture import Platform


@pytest.mark.parametrize("scheme", ["basic", "BASIC", "bAsIc"])
def test_basic_auth_scheme_in_any_case_authenticates(shared_platform: Platform, scheme: str) -> None:
    token = base64.b64encode(f"admin:{shared_platform.password}".encode()).decode()
    r = httpx.get(shared_platform.url + "/system/functions", headers={"Authorization": f"{scheme} {token}"}, timeout=10)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("scheme", ["basic", "BASIC"])
def test_basic_auth_scheme_in_any_case_still_needs_the_password(shared_platform: Platform, scheme: str) -> None:
    token = base64.b64encode(b"admin:wrong").decode()
    r = httpx.get(shared_platform.url + "/system/functions", headers={"Authorization": f"{scheme} {token}"}, timeout=10)
    assert r.status_code == 401


def test_bearer_scheme_in_any_case_reaches_a_private_function(shared_platform: Platform, tmp_path: Path) -> None:
    handler = shared_platform.write_function(tmp_path, "private-echo", "def handle(req):\n    return 'ok'\n")
    shared_platform.deploy("private-echo", handler, labels={"streamfaas.auth/private": "true"})
    url = shared_platform.function_url("private-echo")
    token = shared_platform.http.get(shared_platform.url + "/system/function-token/private-echo").json()["token"]
    for scheme in ("bearer", "BEARER", "Bearer"):
        r = httpx.post(url, content=b"x", headers={"Authorization": f"{scheme} {token}"}, timeout=30)
        assert (r.status_code, r.text) == (200, "ok"), scheme
    assert httpx.post(url, content=b"x", headers={"Authorization": "bearer wrong"}, timeout=30).status_code == 401


def test_private_function_needs_its_token_under_its_namespaced_name_too(platform: Platform, tmp_path: Path) -> None:
    """`/function/NAME.openfaas-fn` (the Go SDK's form) is the same function: the same door."""
    p = platform
    p.deploy("nsprivate", p.write_function(tmp_path, "nsprivate", "def handle(req):\n    return 'inside'\n"),
             labels={"streamfaas.auth/private": "true"})
    token = p.http.get(f"{p.url}/system/function-token/nsprivate").json()["token"]
    for path in ("/function/nsprivate.openfaas-fn", "/function/nsprivate.openfaas-fn/sub", "/async-function/nsprivate.openfaas-fn"):
        assert httpx.post(p.url + path, content=b"x", timeout=30).status_code == 401, path
    r = httpx.post(p.url + "/function/nsprivate.openfaas-fn", content=b"x", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200 and r.text == "inside"


def test_the_admin_password_reaches_no_public_function_in_any_shape(shared_platform: Platform, tmp_path: Path) -> None:
    # The gateway dropped Authorization only when its first value was exactly the admin's Basic
    # credential: a second header, or a list in one, went to the (untrusted) function whole.
    echo = "from flask import request\n\ndef handle(req):\n    return request.headers.get('Authorization', '-')\n"
    shared_platform.deploy("auth-echo", shared_platform.write_function(tmp_path, "auth-echo", echo))
    url = shared_platform.function_url("auth-echo")
    token = base64.b64encode(f"admin:{shared_platform.password}".encode()).decode()
    shapes = [
        [("Authorization", f"Basic {token}")],
        [("Authorization", "Bearer x"), ("Authorization", f"Basic {token}")],
        [("Authorization", f"Bearer x, Basic {token}")],
        [("Authorization", f"basic {token.rstrip('=')}")],
        [("Authorization", "Basic " + base64.b64encode(f"root:{shared_platform.password}".encode()).decode())],
    ]
    for headers in shapes:
        r = httpx.post(url, content=b"x", headers=headers, timeout=30)
        assert (r.status_code, r.text) == (200, "-"), headers  # every Authorization value dropped
    # A caller's own credential for the function still goes through.
    other = base64.b64encode(b"alice:her-own").decode()
    assert httpx.post(url, content=b"x", headers={"Authorization": f"Basic {other}"}, timeout=30).text == f"Basic {other}"
