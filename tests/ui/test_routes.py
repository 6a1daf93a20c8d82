"""The UI's routes on a real gateway: served under basic auth, with no asset from outside."""

from __future__ import annotations

import httpx
import pytest

from platform_fixture import Platform
from streamfaas.ui import STATIC_DIR

UI_PATHS = ["/ui", "/ui/", "/ui/chat", "/ui/static/chat.js", "/ui/static/style.css", "/ui/static/favicon.svg"]
# The one "://" a static file may hold: an SVG's namespace, which is a name, not something loaded.
SVG_NAMESPACE = 'xmlns="http://www.w3.org/2000/svg"'



@pytest.mark.parametrize("path", UI_PATHS)
def test_ui_without_credentials_is_401(shared_platform: Platform, path: str) -> None:
    r = httpx.get(shared_platform.url + path)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic ")


def test_ui_with_a_wrong_password_is_401(shared_platform: Platform) -> None:
    r = httpx.get(shared_platform.url + "/ui/", auth=("admin", shared_platform.password + "x"))
    assert r.status_code == 401


def test_ui_redirects_to_the_functions_page(shared_platform: Platform) -> None:
    r = shared_platform.http.get(shared_platform.url + "/ui")
    assert r.status_code == 302
    assert r.headers["Location"] == "/ui/"


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/ui/", "text/html", 'id="functions"'),
        ("/ui/chat", "text/html", 'id="transcript"'),
        ("/ui/static/chat.js", "javascript", "SSEParser"),
        ("/ui/static/sse.js", "javascript", "export class SSEParser"),
        ("/ui/static/style.css", "text/css", ".transcript"),
        ("/ui/static/favicon.svg", "image/svg+xml", "<svg"),
    ],
)
def test_ui_serves_its_pages_and_assets(
    shared_platform: Platform, path: str, content_type: str, marker: str
) -> None:
    r = shared_platform.http.get(shared_platform.url + path)
    assert r.status_code == 200
    assert content_type in r.headers["Content-Type"]
    assert r.headers["Cache-Control"] == "no-cache"
    assert marker in r.text


@pytest.mark.parametrize(
    "path", ["/ui/static/nope.js", "/ui/static/..%2F_routes.py", "/ui/static/.hidden"]
)
def test_ui_serves_only_its_static_files(shared_platform: Platform, path: str) -> None:
    r = shared_platform.http.get(shared_platform.url + path)
    assert r.status_code == 404


def test_ui_loads_nothing_from_other_origins() -> None:
    for path in STATIC_DIR.iterdir():
        assert "://" not in path.read_text().replace(SVG_NAMESPACE, ""), f"{path.name} refers to another origin"


@pytest.mark.parametrize("path", ["/ui/", "/ui/chat"])
def test_ui_pages_name_their_favicon(shared_platform: Platform, path: str) -> None:
    # Named by the page, under /ui/ and its auth: the browser does not ask for /favicon.ico.
    page = shared_platform.http.get(shared_platform.url + path).text
    assert '<link rel="icon" href="/ui/static/favicon.svg" type="image/svg+xml">' in page
