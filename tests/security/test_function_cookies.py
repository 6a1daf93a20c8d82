"""A function's cookies stay on its own URLs: the UI, the admin API and every function share the
gateway's origin, so a cookie at Path=/ reached them all (three 4 KiB ones made every later
browser request to the gateway a 400), and Clear-Site-Data wiped the origin's storage."""

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
