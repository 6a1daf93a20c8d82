"""The async queue as a confused deputy: a queued call reaches the one function named at submit
time, with the path its caller encoded, and with no credential but that function's own token."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from queue_fixture import FAST_QUEUE, CallbackReceiver

from platform_fixture import Platform

# Answers with the request line's target, exactly as the function's server got it.
REQUEST_ECHO = """
import json
from flask import request

def handle(req):
    return json.dumps({"uri": request.environ.get("REQUEST_URI", ""),
                       "authorization": request.headers.get("Authorization", "")})
"""

PRIVATE = {"streamfaas.auth/private": "true"}

# Each one, run as /function/pub + path by a worker that normalises or decodes, reaches /system.
TRAVERSALS = [
    "/..%2F..%2Fsystem%2Fsecrets",
    "/../../system/secrets",
    "/%2e%2e/%2e%2e/system/secrets",
    "/%2E%2E%2f%2E%2E%2fsystem%2fsecrets",
    "/.%2e/.%2e/system/functions",
    "/x/./../../../system/secrets",
    "/%252e%252e/%252e%252e/system/secrets",
    "/..%5C..%5Csystem%5Csecrets",
    "/..",
    "/.",
]


def raw_request(platform: Platform, method: str, target: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, str, http.client.HTTPMessage]:
    """Send ``target`` as it is: HTTP clients such as httpx normalise dot-segments away."""
    port = int(platform.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace"), resp.headers
    finally:
        conn.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("deputy")
    p = Platform(root / "state", FAST_QUEUE).start()
    try:
        p.deploy("pub", p.write_function(root, "pub", REQUEST_ECHO))
        yield p
    finally:
        p.close()


def _callback_json(receiver: CallbackReceiver, call_id: str) -> dict[str, Any]:
    receiver.wait_all([call_id], timeout=30)
    [callback] = receiver.of(call_id)
    assert callback.function_status == "200", callback.body
    data: dict[str, Any] = json.loads(callback.body)
    return data


def test_async_path_traversal_cannot_reach_system_api(gateway: Platform, receiver: CallbackReceiver) -> None:
    secret = json.dumps({"name": "pwned", "value": "x"}).encode()
    headers = {"X-Callback-Url": receiver.url, "Content-Type": "application/json"}
    for path in TRAVERSALS:
        status, text, _ = raw_request(gateway, "POST", f"/async-function/pub{path}", secret, headers)
        assert status == 400, (path, status, text)
        assert text.count("\n") == 1 and "'..'" in text, text
    # Nothing was queued, so nothing can run later either.
    for failed in ("false", "true"):
        listed = gateway.http.get(f"{gateway.url}/system/queue", params={"failed": failed}).json()
        assert listed["jobs"] == [], listed
    secrets = gateway.http.get(f"{gateway.url}/system/secrets").json()
    assert "pwned" not in [s["name"] for s in secrets]


def test_async_job_keeps_the_raw_encoded_path(gateway: Platform, receiver: CallbackReceiver) -> None:
    # Near misses of a dot-segment are plain names; an escaped "?" or "/" stays escaped.
    target = "/a%3Fx=1/b%2Fc%20d/..e/f../?q=a%26b&r=%3D"
    status, text, headers = raw_request(gateway, "POST", f"/async-function/pub{target}", b"",
                                        {"X-Callback-Url": receiver.url})
    assert status == 202, text
    assert _callback_json(receiver, headers["X-Call-Id"])["uri"] == target


def test_sync_path_forwarded_raw(gateway: Platform) -> None:
    for target in ("/a%3Fx=1", "/a%3Fx=1/b%2Fc?y=%26&z=%3D"):
        status, text, _ = raw_request(gateway, "GET", f"/function/pub{target}")
        assert status == 200, text
        assert json.loads(text)["uri"] == target


@pytest.fixture(scope="module")
def open_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """Without admin auth: the worker then has no admin credentials to fall back on."""
    root = tmp_path_factory.mktemp("open")
    p = Platform(root / "state", (*FAST_QUEUE, "--no-auth")).start()
    try:
        p.deploy("hidden", p.write_function(root, "hidden", REQUEST_ECHO), labels=PRIVATE)
        yield p
    finally:
        p.close()


def test_async_private_function_runs_with_its_own_token(open_gateway: Platform, receiver: CallbackReceiver) -> None:
    p = open_gateway
    status, _, _ = raw_request(p, "POST", "/async-function/hidden", b"x", {"X-Callback-Url": receiver.url})
    assert status == 401  # the token is still checked at submit
    token = p.http.get(f"{p.url}/system/function-token/hidden").json()["token"]
    r = p.http.post(f"{p.url}/async-function/hidden/work", content=b"x",
                    headers={"X-Callback-Url": receiver.url, "Authorization": f"Bearer {token}"})
    assert r.status_code == 202, r.text
    answer = _callback_json(receiver, r.headers["X-Call-Id"])
    # It ran; the gateway took the token and did not pass it on.
    assert answer == {"uri": "/work", "authorization": ""}
