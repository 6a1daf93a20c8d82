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


PRIVATE = "def handle(req):\n    print('PRIVATE CALLED', flush=True)\n    return 'private result'\n"
REDIRECTS = "def handle(req):\n    return ('', 307, {'Location': '/function/vault/drop-everything?confirm=yes'})\n"


def test_the_pages_do_not_follow_a_functions_redirect_with_the_admins_credentials(
    platform: Platform, open_browser: OpenBrowser, tmp_path: Path
) -> None:
    # fetch follows a 307 by default and sends the POST again, same-origin, with the browser's
    # cached basic credentials, which a private function takes from its admin: a function the
    # admin invoked from /ui/ could call a private one, with a path and body of its choosing.
    from playwright.sync_api import expect

    p = platform
    p.deploy("vault", p.write_function(tmp_path, "vault", PRIVATE), labels={"streamfaas.auth/private": "true"})
    p.deploy("bouncer", p.write_function(tmp_path, "bouncer", REDIRECTS))
    context = open_browser(("admin", p.password))
    page = context.pages[0]
    page.goto(p.url + "/ui/")
    expect(page.locator('tr[data-function="bouncer"]')).to_contain_text("1/1")
    page.select_option("#invoke-function", "bouncer")
    page.fill("#invoke-body", "hello")
    page.click("#invoke")
    expect(page.locator("#invoke-error")).to_contain_text("redirect, which this page does not follow")
    page.goto(p.url + "/ui/chat?function=bouncer")
    page.fill("#prompt", "hello")
    page.press("#prompt", "Enter")
    expect(page.locator(".turn.assistant .error").last).to_contain_text("redirect, which this page does not follow")
    assert "private result" not in page.content()
    assert p.http.get(p.url + "/system/function/vault").json().get("invocationCount", 0) == 0
    assert "PRIVATE CALLED" not in p.http.get(p.url + "/system/logs", params={"name": "vault", "tail": "100"}).text
