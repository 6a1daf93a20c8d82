"""A page that a function serves runs on the gateway's origin, where the admin's browser holds
basic credentials for /system. It must not be able to use them (reflected input or a malicious
function): function responses are sandboxed documents with an opaque origin."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import BrowserContext

from platform_fixture import Platform

OpenBrowser = Callable[..., BrowserContext]

EVIL_PAGE = '''
from flask import Response

PAGE = """<!doctype html><title>loading</title><script>
(async () => {
  let outcome = [];
  try {
    const r = await fetch("/system/secrets", {method: "POST", credentials: "include",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({name: "xss-pwned", value: "x"})});
    outcome.push("post:" + r.status);
  } catch (e) { outcome.push("post:blocked"); }
  try {
    const r = await fetch("/system/functions", {credentials: "include"});
    outcome.push("read:" + r.status + ":" + (await r.text()).length);
  } catch (e) { outcome.push("read:blocked"); }
  document.title = "done " + outcome.join(" ");
})();
</script>"""

def handle(req):
    return Response(PAGE, mimetype="text/html")
'''


def test_function_page_cannot_use_admin_credentials(platform: Platform, open_browser: OpenBrowser, tmp_path: Path) -> None:
    p = platform
    p.deploy("evilpage", p.write_function(tmp_path, "evilpage", EVIL_PAGE))
    headers = httpx.get(p.function_url("evilpage"), timeout=30).headers
    assert "sandbox" in headers.get("Content-Security-Policy", "")
    assert "allow-same-origin" not in headers.get("Content-Security-Policy", "")

    context = open_browser(("admin", p.password))
    page = context.pages[0]
    page.goto(p.url + "/ui/")  # the admin has logged in
    page.goto(p.function_url("evilpage"))
    page.wait_for_function("document.title.startsWith('done')")
    title = page.title()
    assert "read:blocked" in title, title
    names = [s["name"] for s in p.http.get(p.url + "/system/secrets").json()]
    assert "xss-pwned" not in names, title
