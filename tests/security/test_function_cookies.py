"""A function's cookies stay on its own URLs: the UI, the admin API and every function share the
gateway's origin, so a cookie at Path=/ reached them all (three 4 KiB ones made every later
browser request to the gateway a 400), and Clear-Site-Data wiped the origin's storage. Headers
that set a policy for the whole origin (reporting, HSTS, Alt-Svc, client hints) are dropped too."""

from __future__ import annotations

import pytest

from platform_fixture import Platform

COOKIES = """
from flask import Response

def handle(req):
    resp = Response("set")
    resp.set_cookie("wide", "x" * 4000, path="/", domain="127.0.0.1")
    resp.set_cookie("nopath", "1")
    resp.set_cookie("own", "2", path="/function/cookie-jar/app", httponly=True, samesite="Lax")
    resp.headers["Clear-Site-Data"] = '"cookies", "storage"'
    return resp
"""

ORIGIN_WIDE = {
    "NEL": '{"report_to":"x","max_age":31536000,"include_subdomains":true,"success_fraction":1.0}',
    "Report-To": '{"group":"x","max_age":31536000,"endpoints":[{"url":"https://attacker.example/r"}]}',
    "Reporting-Endpoints": 'x="https://attacker.example/r"',
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "Alt-Svc": 'h2="attacker.example:443"; ma=31536000',
    "Accept-CH": "Sec-CH-UA-Full-Version-List",
    "Critical-CH": "Sec-CH-UA-Full-Version-List",
    "Origin-Agent-Cluster": "?0",
    "Service-Worker-Allowed": "/",
}
POLICIES = f"""
from flask import Response

def handle(req):
    resp = Response("policies")
    for key, value in {ORIGIN_WIDE!r}.items():
        resp.headers[key] = value
    resp.headers["X-Own-Header"] = "kept"
    return resp
"""


@pytest.fixture(scope="module")
def cookie_jar(shared_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = shared_platform.write_function(tmp_path_factory.mktemp("cookies"), "cookie-jar", COOKIES)
    shared_platform.deploy("cookie-jar", folder)
    return "cookie-jar"


def test_a_functions_cookies_are_confined_to_its_own_path(shared_platform: Platform, cookie_jar: str) -> None:
    r = shared_platform.http.get(shared_platform.function_url(cookie_jar))
    assert (r.status_code, r.text) == (200, "set")
    cookies = {c.split("=", 1)[0]: c for c in r.headers.get_list("set-cookie")}
    assert set(cookies) == {"wide", "nopath", "own"}
    for name, header in cookies.items():
        fields = [f.strip().lower() for f in header.split(";")]
        assert not any(f.startswith("domain") for f in fields), header
        paths = [f for f in fields if f.startswith("path=")]
        assert len(paths) == 1, header
        expected = "path=/function/cookie-jar/app" if name == "own" else "path=/function/cookie-jar"
        assert paths[0] == expected, header
    assert "httponly" in cookies["own"].lower() and "samesite=lax" in cookies["own"].lower()
    assert "x" * 4000 in cookies["wide"]  # the value itself is the function's business
    assert "Clear-Site-Data" not in r.headers


def test_a_function_sets_no_policy_for_the_whole_origin(shared_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = shared_platform.write_function(tmp_path_factory.mktemp("policies"), "origin-policies", POLICIES)
    shared_platform.deploy("origin-policies", folder)
    r = shared_platform.http.get(shared_platform.function_url("origin-policies"))
    assert (r.status_code, r.text) == (200, "policies")
    assert [key for key in ORIGIN_WIDE if key in r.headers] == []
    assert r.headers["X-Own-Header"] == "kept"  # the function's other headers pass
