"""Cross-site request forgery through a private function: a page on another origin, in a
browser that holds the admin's basic auth, must not call a private function with it (the
browser adds the cached password to any request to the gateway, a form POST or an <img> GET).
And no other site may frame the UI."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from platform_fixture import Platform

CROSS_SITE = [
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # another port of the same host is another origin
    {"Origin": "http://127.0.0.1:1"},
    {"Origin": "null"},
]


@pytest.fixture(scope="module")
def private_fn(shared_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = shared_platform.write_function(tmp_path_factory.mktemp("fn"), "csrf-private", "def handle(req):\n    return 'moved ' + req\n")
    shared_platform.deploy("csrf-private", folder, labels={"streamfaas.auth/private": "true"})
    return "csrf-private"


def _count(platform: Platform, name: str) -> int:
    return int(platform.status(name)["invocationCount"])


@pytest.mark.parametrize("browser", CROSS_SITE, ids=["evil-origin", "cross-site", "same-site", "other-port", "null-origin"])
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_admin_password_from_another_site_does_not_call_a_private_function(
    shared_platform: Platform, private_fn: str, browser: dict[str, str], method: str
) -> None:
    before = _count(shared_platform, private_fn)
    form = {"Content-Type": "application/x-www-form-urlencoded"} if method == "POST" else {}
    r = shared_platform.http.request(
        method, shared_platform.function_url(private_fn), content=b"amount=1000&to=attacker" if method == "POST" else None,
        headers={**browser, **form},
    )
    assert r.status_code == 401, r.text
    assert "another site" in r.text and r.text.count("\n") <= 1
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")  # no password prompt on the attacker's behalf
    a = shared_platform.http.post(f"{shared_platform.url}/async-function/{private_fn}", content=b"x", headers=browser)
    assert a.status_code == 401, a.text
    assert _count(shared_platform, private_fn) == before


def test_the_same_admin_password_from_the_gateways_own_pages_or_a_plain_client_still_works(
    shared_platform: Platform, private_fn: str
) -> None:
    own = shared_platform.url  # the UI's own origin
    for headers in ({}, {"Origin": own, "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}):
        r = shared_platform.http.post(shared_platform.function_url(private_fn), content=b"x", headers=headers)
        assert (r.status_code, r.text) == (200, "moved x"), headers


def test_the_functions_token_works_from_anywhere(shared_platform: Platform, private_fn: str) -> None:
    # A browser never adds a bearer token by itself: a page that has it was given it.
    token = shared_platform.http.get(f"{shared_platform.url}/system/function-token/{private_fn}").json()["token"]
    r = httpx.post(shared_platform.function_url(private_fn), content=b"y", timeout=30,
                   headers={"Authorization": f"Bearer {token}", **CROSS_SITE[0]})
    assert (r.status_code, r.text) == (200, "moved y")


def test_a_private_functions_metrics_are_shown_to_the_admin_only(shared_platform: Platform, private_fn: str) -> None:
    # /metrics is public by default: a private function's name and traffic are not.
    assert httpx.post(shared_platform.function_url(private_fn), content=b"q", timeout=30).status_code == 401
    series = f'function_name="{private_fn}"'
    anonymous = httpx.get(f"{shared_platform.url}/metrics", timeout=30)
    assert anonymous.status_code == 200 and "gateway_function_invocation_total" in anonymous.text
    assert series not in anonymous.text
    assert series in shared_platform.http.get(f"{shared_platform.url}/metrics").text  # the admin's basic auth


def test_a_token_named_hop_by_hop_is_still_checked_and_never_passed_on(shared_platform: Platform, private_fn: str) -> None:
    # "Connection: Authorization" makes the header hop-by-hop: it is not forwarded, and its
    # removal must not fail the call (it was a 500 with a traceback in the gateway's log).
    token = shared_platform.http.get(f"{shared_platform.url}/system/function-token/{private_fn}").json()["token"]
    for connection in ("Authorization", "keep-alive, Authorization"):
        r = httpx.post(shared_platform.function_url(private_fn), content=b"z", timeout=30,
                       headers={"Authorization": f"Bearer {token}", "Connection": connection})
        assert (r.status_code, r.text) == (200, "moved z"), connection
    r = httpx.post(shared_platform.function_url(private_fn), content=b"z", timeout=30, headers={"Connection": "Authorization"})
    assert r.status_code == 401


@pytest.mark.parametrize("path", ["/ui/", "/ui/chat", "/ui/static/common.js"])
def test_no_other_site_may_frame_the_ui(shared_platform: Platform, path: str) -> None:
    r = shared_platform.http.get(shared_platform.url + path)
    assert r.status_code == 200, path
    assert r.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_a_removed_private_functions_metrics_stay_hidden(shared_platform: Platform, tmp_path: Path) -> None:
    # The series outlive the function; the hidden set was built from the functions deployed
    # now, so once removed its name and traffic showed on the public /metrics.
    p = shared_platform
    p.deploy("gone-private", p.write_function(tmp_path, "gone-private", "def handle(req):\n    return 'ok'\n"),
             labels={"streamfaas.auth/private": "true"})
    token = p.http.get(f"{p.url}/system/function-token/gone-private").json()["token"]
    assert httpx.post(p.function_url("gone-private"), content=b"x", timeout=30,
                      headers={"Authorization": f"Bearer {token}"}).status_code == 200
    series = 'function_name="gone-private"'
    assert series in p.http.get(f"{p.url}/metrics").text
    assert p.http.request("DELETE", f"{p.url}/system/functions", json={"functionName": "gone-private"}).status_code in (200, 202)
    anonymous = httpx.get(f"{p.url}/metrics", timeout=30)
    assert anonymous.status_code == 200 and "gateway_function_invocation_total" in anonymous.text
    assert series not in anonymous.text
