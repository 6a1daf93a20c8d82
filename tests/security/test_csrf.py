"""Cross-site request forgery on /system: a page on another origin, in the admin's browser,
must not change anything. (The browser test itself is tests/ui/test_csrf.py.)"""

from __future__ import annotations

import json

import httpx
import pytest

from platform_fixture import Platform

# A secret body that a cross-site <form enctype="text/plain"> can produce: `name=value` with
# the '=' hidden inside a JSON string.
FORGED_SECRET = b'{"name":"forged","value":"x="}\r\n'

STATE_CHANGING = [
    ("POST", "/system/functions", {"service": "forged", "image": "forged:latest"}),
    ("PUT", "/system/functions", {"service": "forged", "image": "forged:latest"}),
    ("DELETE", "/system/functions", {"functionName": "forged"}),
    ("POST", "/system/scale-function/forged", {"serviceName": "forged", "replicas": 1}),
    ("POST", "/system/secrets", {"name": "forged", "value": "x"}),
    ("PUT", "/system/secrets", {"name": "forged", "value": "x"}),
    ("DELETE", "/system/secrets", {"name": "forged"}),
]


def _secret_names(platform: Platform) -> list[str]:
    r = platform.http.get(platform.url + "/system/secrets")
    r.raise_for_status()
    return [s["name"] for s in r.json()]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None])
def test_csrf_form_body_that_parses_as_json_creates_no_secret(shared_platform: Platform, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = shared_platform.http.post(shared_platform.url + "/system/secrets", content=FORGED_SECRET, headers=headers)
    assert r.status_code == 415, r.text
    assert r.text.count("\n") == 1 and "application/json" in r.text
    assert "forged" not in _secret_names(shared_platform)


@pytest.mark.parametrize(("method", "path", "body"), STATE_CHANGING)
def test_csrf_text_plain_body_is_refused_on_every_state_changing_route(
    shared_platform: Platform, method: str, path: str, body: dict[str, object]
) -> None:
    r = shared_platform.http.request(
        method, shared_platform.url + path, content=json.dumps(body).encode(), headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 415, r.text


@pytest.mark.parametrize(("method", "path", "body"), STATE_CHANGING)
@pytest.mark.parametrize(
    "browser_headers",
    [
        {"Origin": "http://127.0.0.1:1"},  # another port on the same host is another origin
        {"Origin": "http://attacker.example"},
        {"Origin": "null"},  # sandboxed iframes, data: URLs
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
    ids=["other-port", "other-host", "null-origin", "cross-site", "same-site"],
)
def test_csrf_request_from_other_origin_is_refused(
    shared_platform: Platform, method: str, path: str, body: dict[str, object], browser_headers: dict[str, str]
) -> None:
    r = shared_platform.http.request(method, shared_platform.url + path, json=body, headers=browser_headers)
    assert r.status_code == 403, r.text
    assert "forged" not in _secret_names(shared_platform)


def test_csrf_from_other_origin_without_credentials_gets_no_login_prompt(shared_platform: Platform) -> None:
    # A 401 would make the browser ask the admin for the password on the attacker's behalf.
    r = httpx.post(
        shared_platform.url + "/system/secrets", json={"name": "forged", "value": "x"},
        headers={"Origin": "http://attacker.example", "Sec-Fetch-Site": "cross-site"}, timeout=10,
    )
    assert r.status_code == 403
    assert "www-authenticate" not in r.headers


def test_csrf_origin_with_the_gateways_port_on_another_host_name_is_refused(shared_platform: Platform) -> None:
    port = shared_platform.url.rsplit(":", 1)[1]
    r = shared_platform.http.post(
        shared_platform.url + "/system/secrets", json={"name": "forged", "value": "x"},
        headers={"Origin": f"http://localhost:{port}"},
    )
    assert r.status_code == 403
    assert "forged" not in _secret_names(shared_platform)


def test_same_origin_browser_and_plain_clients_still_change_state(shared_platform: Platform) -> None:
    url = shared_platform.url + "/system/secrets"
    http = shared_platform.http
    same_origin = {"Origin": shared_platform.url, "Sec-Fetch-Site": "same-origin"}
    assert http.post(url, json={"name": "same-origin", "value": "1"}, headers=same_origin).status_code == 201
    assert http.put(url, json={"name": "same-origin", "value": "2"}, headers={"Sec-Fetch-Site": "none"}).status_code == 200
    # curl, faas-cli and the CLI send neither header; faas-cli's JSON may name a charset.
    r = http.request("DELETE", url, content=b'{"name":"same-origin"}', headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200
    assert "same-origin" not in _secret_names(shared_platform)


def test_csrf_bodyless_queue_purge_from_other_origin_is_refused(shared_platform: Platform) -> None:
    url = shared_platform.url + "/system/queue"
    http = shared_platform.http
    assert http.delete(url, headers={"Origin": "http://attacker.example"}).status_code == 403
    assert http.delete(url, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    # Without a body there is no media type to demand: the CLI's purge sends none.
    assert http.delete(url).json() == {"purged": 0}
