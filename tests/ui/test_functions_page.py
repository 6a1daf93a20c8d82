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


# An event stream as a chat function sends it: JSON deltas, a line of plain data, then (once the
# test opens the gate) the end: `event: done` cut by the token limit, or `event: error`.
EVENTS = """
import os, urllib.request
from flask import Response

def handle(req):
    def events():
        yield 'data: {"content": "Hel"}\\n\\n'
        yield 'data: {"content": "lo"}\\n\\n'
        yield "data: not json\\n\\n"
        urllib.request.urlopen(os.environ["SIGNALS"] + "/wait/" + req + "?timeout=30").read()
        if req == "fail":
            yield 'event: error\\ndata: {"error": {"message": "the model went away"}}\\n\\n'
        else:
            yield 'event: done\\ndata: {"finish_reason": "length", "usage": {"completion_tokens": 2}}\\n\\n'
    return Response(events(), mimetype="text/event-stream")
"""

# 40 lines, then (after the gate) 40 more: more than the output box holds.
LINES = """
import os, urllib.request
from flask import Response

def handle(req):
    def lines():
        for i in range(80):
            if i == 40:
                urllib.request.urlopen(os.environ["SIGNALS"] + "/wait/more?timeout=30").read()
            yield f"line {i}\\n"
    return Response(lines(), mimetype="text/plain")
"""


def test_event_stream_shows_as_text_with_a_raw_toggle_and_its_end(
    platform: Platform,
    signals: Signals,
    open_browser: OpenBrowser,
    tmp_path: Path,
    screenshot: Callable[[BrowserContext, str], None],
) -> None:
    platform.deploy("events", platform.write_function(tmp_path / "fn", "events", EVENTS), env={"SIGNALS": signals.url})
    context = open_browser(("admin", platform.password))
    page = context.pages[0]
    page.goto(platform.url + "/ui/")
    expect(page.locator('tr[data-function="events"]')).to_contain_text("1/1")
    page.select_option("#invoke-function", "events")
    output, raw, status = page.locator("#invoke-output"), page.locator("#invoke-raw-output"), page.locator("#invoke-status")

    page.fill("#invoke-body", "cut")
    page.click("#invoke")
    expect(output).to_have_text("Hellonot json\n")  # deltas joined; other data a line each
    expect(status).to_contain_text("streaming")
    page.check("#invoke-raw")
    expect(raw).to_be_visible()
    expect(output).to_be_hidden()
    expect(raw).to_contain_text('data: {"content": "Hel"}\n\ndata: {"content": "lo"}\n\ndata: not json\n\n')
    page.uncheck("#invoke-raw")
    expect(output).to_be_visible()
    signals.open("cut")
    expect(status).to_contain_text("cut at 2 tokens in")
    expect(output).to_have_text("Hellonot json\n")
    screenshot(context, "functions-event-stream")

    page.fill("#invoke-body", "fail")
    page.click("#invoke")
    expect(output).to_have_text("Hellonot json\n")
    signals.open("fail")
    expect(page.locator("#invoke-error")).to_have_text("the model went away")
    expect(status).to_contain_text("error event")


def test_output_stays_in_view_while_it_streams(
    platform: Platform, signals: Signals, open_browser: OpenBrowser, tmp_path: Path
) -> None:
    platform.deploy("lines", platform.write_function(tmp_path / "fn", "lines", LINES), env={"SIGNALS": signals.url})
    page = open_browser(("admin", platform.password), viewport=(390, 640)).pages[0]
    page.goto(platform.url + "/ui/")
    expect(page.locator('tr[data-function="lines"]')).to_contain_text("1/1")
    page.select_option("#invoke-function", "lines")
    page.click("#invoke")
    output = page.locator("#invoke-output")
    # Its end is on screen (to the pixel it scrolls by), and the box shows its newest line.
    in_view = """(el) => { const r = el.getBoundingClientRect();
        return r.top >= 0 && r.bottom <= innerHeight + 1 && el.scrollHeight - el.scrollTop - el.clientHeight < 2; }"""
    expect(output).to_contain_text("line 39\n")
    page.wait_for_function(f"({in_view})(document.getElementById('invoke-output'))")
    signals.open("more")
    expect(output).to_contain_text("line 79\n")
    page.wait_for_function(f"({in_view})(document.getElementById('invoke-output'))")
    expect(page.locator("#invoke-status")).to_contain_text("done in")
