"""/ui/ in headless Chromium: it lists the deployed functions and streams an invocation live."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import BrowserContext, expect

from platform_fixture import Platform, Signals

OpenBrowser = Callable[..., BrowserContext]

# Sends its first line, then holds the stream open until the test opens the gate. The first
# line can only show up before the gate opens if the page renders chunks as they arrive.
GATED = """
import os, urllib.request
from flask import Response

def handle(req):
    signals = os.environ["SIGNALS"]

    def lines():
        yield f"got: {req}\\n"
        urllib.request.urlopen(signals + "/wait/gate?timeout=30").read()
        yield "after the gate\\n"

    return Response(lines(), mimetype="text/plain")
"""


def test_functions_page_lists_a_function_and_streams_its_output(
    platform: Platform,
    signals: Signals,
    open_browser: OpenBrowser,
    tmp_path: Path,
    screenshot: Callable[[BrowserContext, str], None],
) -> None:
    platform.deploy(
        "gated", platform.write_function(tmp_path / "fn", "gated", GATED), env={"SIGNALS": signals.url}
    )
    context = open_browser(("admin", platform.password))
    page = context.pages[0]
    page.goto(platform.url + "/ui/")

    row = page.locator('tr[data-function="gated"]')
    expect(row).to_contain_text("gated")
    expect(row).to_contain_text("1/1")
    row.get_by_role("button", name="Invoke").click()
    expect(page.locator("#invoke-function")).to_have_value("gated")

    page.fill("#invoke-body", "hello")
    page.click("#invoke")
    output = page.locator("#invoke-output")
    expect(output).to_have_text("got: hello\n")
    expect(page.locator("#invoke-status")).to_contain_text("streaming")
    # The page shows the first line while the function still holds back the rest.
    screenshot(context, "functions-streaming")

    signals.open("gate")
    expect(output).to_have_text("got: hello\nafter the gate\n")
    expect(page.locator("#invoke-status")).to_contain_text(re.compile(r"HTTP 200 .* done in"))
    screenshot(context, "functions-done")


def test_ui_without_credentials_is_401_in_the_browser(
    platform: Platform, open_browser: OpenBrowser
) -> None:
    page = open_browser().pages[0]
    page.goto(platform.url + "/healthz")  # same origin, no auth needed
    # "omit": no credentials and no login prompt, which headless Chromium would wait on.
    status = page.evaluate(
        "fetch('/ui/', {credentials: 'omit'}).then((r) => [r.status, r.headers.get('WWW-Authenticate')])"
    )
    assert status == [401, 'Basic realm="streamfaas", charset="UTF-8"']


def test_ui_with_a_wrong_password_shows_401_not_the_page(
    platform: Platform, open_browser: OpenBrowser
) -> None:
    page = open_browser(("admin", "not-the-password")).pages[0]
    response = page.goto(platform.url + "/ui/")
    assert response is not None and response.status == 401
    expect(page.locator("body")).to_contain_text("authentication required")
    expect(page.locator("#functions")).to_have_count(0)
