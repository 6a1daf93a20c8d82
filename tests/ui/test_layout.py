"""Both UI pages fit a phone, a tablet and a desktop: no sideways scroll, nothing clipped.

Each width gets real content (a long function name and image, a streamed answer with a long
unbroken word) and leaves screenshots under the test's tmp_path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from platform_fixture import Platform

OpenBrowser = Callable[..., BrowserContext]

LONG_NAME = "summarise-quarterly-reports-for-the-finance-team"
LONG_IMAGE = f"{LONG_NAME}:2024.06.01-build.1234"
UNBROKEN = "x" * 160

# `chat` for the chat page (its default function), and output for the functions page.
ECHO = f"""
import json
from flask import Response

def handle(req):
    def events():
        for word in ["Here", " is", " a", " long", " word:", " {UNBROKEN}", " and", " more", " text."]:
            yield f"data: {{json.dumps({{'content': word}})}}\\n\\n"
        yield 'event: done\\ndata: {{"finish_reason": "stop"}}\\n\\n'
    return Response(events(), mimetype="text/event-stream")
"""

# Elements that must lie wholly inside the viewport (hidden ones have no client rects).
CLIPPED = """() => [...document.querySelectorAll('button, input, select, textarea, a, h1, h2, th, td, label, pre, p')]
    .filter((e) => e.getClientRects().length > 0)
    .filter((e) => { const r = e.getBoundingClientRect(); return r.right > innerWidth + 0.5 || r.left < -0.5; })
    .map((e) => `${e.tagName.toLowerCase()}#${e.id} ${e.textContent.trim().slice(0, 40)}`)"""


@pytest.fixture(scope="module")
def deployed(shared_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Platform:
    root = tmp_path_factory.mktemp("layout")
    shared_platform.deploy("chat", shared_platform.write_function(root, "chat", ECHO))
    shared_platform.deploy(LONG_NAME, shared_platform.write_function(root, LONG_NAME, ECHO), image=LONG_IMAGE)
    return shared_platform


def assert_fits(page: Page) -> None:
    scroll_width, inner_width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll_width <= inner_width, f"the page is {scroll_width} px wide in a {inner_width} px window"
    assert page.evaluate(CLIPPED) == []


def save(page: Page, folder: Path, name: str, screenshot: Callable[[BrowserContext, str], None]) -> None:
    folder.mkdir(exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    screenshot(page.context, name)  # a copy under UI_SCREENSHOTS, when set


@pytest.mark.parametrize(("width", "height"), [(390, 844), (768, 1024), (1280, 800)])
def test_both_pages_fit_the_window(
    deployed: Platform,
    open_browser: OpenBrowser,
    tmp_path: Path,
    screenshot: Callable[[BrowserContext, str], None],
    width: int,
    height: int,
) -> None:
    shots = tmp_path / "screenshots"
    page = open_browser(("admin", deployed.password), viewport=(width, height)).pages[0]

    page.goto(deployed.url + "/ui/")
    expect(page.locator(f'tr[data-function="{LONG_NAME}"]')).to_contain_text(LONG_NAME)
    icon = "fetch(document.querySelector('link[rel=icon]').href).then((r) => [r.status, r.headers.get('Content-Type')])"
    assert page.evaluate(icon) == [200, "image/svg+xml"]
    page.select_option("#invoke-function", LONG_NAME)
    page.fill("#invoke-body", "hello")
    page.click("#invoke")
    expect(page.locator("#invoke-status")).to_contain_text("done in")
    expect(page.locator("#invoke-output")).to_contain_text(UNBROKEN)
    assert_fits(page)
    save(page, shots, f"functions-{width}", screenshot)

    page.goto(deployed.url + "/ui/chat")
    page.fill("#prompt", "Say something long.")
    page.press("#prompt", "Enter")
    expect(page.locator(".turn.assistant .state")).to_have_text("done")
    assert_fits(page)
    save(page, shots, f"chat-{width}", screenshot)
    assert sorted(p.name for p in shots.iterdir()) == [f"chat-{width}.png", f"functions-{width}.png"]
