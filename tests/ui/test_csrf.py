"""CSRF in a real browser: the admin, logged in to /ui/, opens a page on another origin."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import BrowserContext

from platform_fixture import Platform

OpenBrowser = Callable[..., BrowserContext]

# A text/plain form sends `name=value\r\n`; with the '=' inside a JSON string the body is
# {"name":"csrf-pwned","value":"x="}, valid JSON.
ATTACK_PAGE = """<!doctype html>
<form id="forge" method="POST" enctype="text/plain" action="{action}">
<input type="hidden" name='{{"name":"csrf-pwned","value":"x' value='"}}'>
</form>
<script>document.getElementById("forge").submit();</script>
"""


@pytest.fixture
def attacker_site() -> Iterator[Callable[[str], str]]:
    """Serves one page on another 127.0.0.1 port (another origin); returns its URL."""
    pages: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(html: str) -> str:
        pages["/attack.html"] = html.encode()
        return f"http://127.0.0.1:{server.server_address[1]}/attack.html"

    try:
        yield serve
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _secret_names(platform: Platform) -> list[str]:
    r = platform.http.get(platform.url + "/system/secrets")
    r.raise_for_status()
    return [s["name"] for s in r.json()]


def test_csrf_form_from_other_origin_creates_no_secret(
    platform: Platform, open_browser: OpenBrowser, attacker_site: Callable[[str], str]
) -> None:
    context = open_browser(("admin", platform.password))
    page = context.pages[0]
    page.goto(platform.url + "/ui/")  # the admin has logged in

    target = platform.url + "/system/secrets"
    page.goto(attacker_site(ATTACK_PAGE.format(action=target)))
    page.wait_for_url(target)  # the form went to the gateway, and its answer has loaded

    assert "csrf-pwned" not in _secret_names(platform)
    assert "refused" in page.content()


def test_same_origin_ui_page_can_still_post_json_to_system(platform: Platform, open_browser: OpenBrowser) -> None:
    context = open_browser(("admin", platform.password))
    page = context.pages[0]
    page.goto(platform.url + "/ui/")
    statuses = page.evaluate(
        """async () => {
            const send = (method, body) => fetch("/system/secrets", {
                method, headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
            }).then(r => r.status);
            return [await send("POST", {name: "from-ui", value: "1"}), await send("DELETE", {name: "from-ui"})];
        }"""
    )
    assert statuses == [201, 200]
