"""The functions page's live stream charts in headless Chromium: they appear for a function
with streams, show what ``/system/stream-history`` says, and fit a phone, a tablet and a desktop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from platform_fixture import Platform, wait_for

OpenBrowser = Callable[..., BrowserContext]

# Events every 0.2 s until the client goes away.
ENDLESS = """
import time
from flask import Response

def handle(req):
    def gen():
        while True:
            yield "data: tick\\n\\n"
            time.sleep(0.2)
    return Response(gen(), mimetype="text/event-stream")
"""

NAME = "charted"

# Chart parts that must lie wholly inside the viewport (hidden ones have no client rects).
CLIPPED = """() => [...document.querySelectorAll('#stream-charts h3, #stream-charts figure, #stream-charts svg, #stream-charts span')]
    .filter((e) => e.getClientRects().length > 0)
    .filter((e) => { const r = e.getBoundingClientRect(); return r.right > innerWidth + 0.5 || r.left < -0.5; })
    .map((e) => `${e.tagName.toLowerCase()} ${e.textContent.trim().slice(0, 40)}`)"""

SVG_BOXES = """(name) => [...document.querySelectorAll(`article[data-function="${name}"] svg`)].slice(0, 3)
    .map((e) => { const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}; })"""


@pytest.fixture(scope="module")
def charted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("charts")
    p = Platform(root / "state", ("--stream-history-interval", "0.5s")).start()
    try:
        p.deploy(NAME, p.write_function(root / "fn", NAME, ENDLESS))
        yield p
    finally:
        p.close()


def history(platform: Platform) -> dict[str, Any]:
    r = platform.http.get(f"{platform.url}/system/stream-history")
    assert r.status_code == 200, r.text
    series: dict[str, Any] = r.json()["functions"].get(NAME) or {}
    return series


def latest(values: list[float | None]) -> float | None:
    return next((v for v in reversed(values) if v is not None), None)


def figure_data(page: Page, chart: str, key: str) -> str | None:
    return page.locator(f'article[data-function="{NAME}"] figure[data-chart="{chart}"]').get_attribute(f"data-{key}")


def test_charts_show_a_functions_streams_and_fit_every_width(
    charted: Platform,
    open_browser: OpenBrowser,
    tmp_path: Path,
    screenshot: Callable[[BrowserContext, str], None],
) -> None:
    url = charted.function_url(NAME)
    with httpx.stream("GET", url, timeout=30) as gone:
        assert next(gone.iter_lines()) == "retry: 3000"
    # One client came and went; this one stays while the page is looked at.
    with httpx.stream("GET", url, timeout=30) as held:
        assert next(lines := held.iter_lines()) == "retry: 3000"
        wait_for(
            lambda: (s := history(charted)) and s["open"][-1] == 1 and sum(s["disconnects"]["client"]) == 1,
            10,
            what="the history to show one open stream and one client disconnect",
        )
        series = history(charted)
        page = open_browser(("admin", charted.password), viewport=(1280, 800)).pages[0]
        page.goto(charted.url + "/ui/")

        block = page.locator(f'article[data-function="{NAME}"]')
        expect(block.locator("h3")).to_have_text(NAME)
        expect(block.locator("figure")).to_have_count(3)
        open_chart = block.locator('figure[data-chart="open"]')
        expect(open_chart).to_have_attribute("data-now", "1")
        expect(open_chart.locator("figcaption")).to_contain_text("1 now")
        disconnects = block.locator('figure[data-chart="disconnects"]')
        expect(disconnects).to_have_attribute("data-client", "1")
        expect(disconnects).to_have_attribute("data-function", "0")
        expect(disconnects).to_have_attribute("data-timeout", "0")
        expect(disconnects.locator(".chart-legend")).to_contain_text("client 1")
        expect(disconnects.locator("rect.bar.client")).to_have_count(1)
        # TTFB: the latest interval's quantiles, as the endpoint has them.
        p50, p99 = latest(series["ttfb_p50_s"]), latest(series["ttfb_p99_s"])
        assert p50 is not None and p99 is not None
        wait_for(lambda: float(figure_data(page, "ttfb", "p50") or "nan") == pytest.approx(p50), 10, what="the page's TTFB p50")
        assert float(figure_data(page, "ttfb", "p99") or "nan") == pytest.approx(p99)
        ttfb = block.locator('figure[data-chart="ttfb"]')
        expect(ttfb.locator("figcaption")).to_contain_text("p50")
        for path in ("path.line.open", "path.line.p50", "path.line.p99"):
            assert (block.locator(path).get_attribute("d") or "").startswith("M"), path
        assert next(lines) == "data: tick"  # still streaming all along

        shots = tmp_path / "screenshots"
        shots.mkdir()
        for width, height in ((390, 844), (768, 1024), (1280, 800)):
            page.set_viewport_size({"width": width, "height": height})
            # In the page's own turn: the article can be redrawn between Playwright's finding it
            # and scrolling to it ("not attached to the DOM").
            page.evaluate("name => document.querySelector(`article[data-function=\"${name}\"]`).scrollIntoView({block: 'nearest'})", NAME)
            scroll_width, inner_width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert scroll_width <= inner_width, f"the page is {scroll_width} px wide in a {inner_width} px window"
            assert page.evaluate(CLIPPED) == []
            # One read of the three boxes: the page redraws its charts every half second, and an
            # svg asked for one at a time can be replaced between the asks (its box is then None).
            boxes = page.evaluate(SVG_BOXES, NAME)
            assert len(boxes) == 3 and all(b["width"] >= 120 and b["height"] >= 40 for b in boxes), (width, boxes)
            tops = {round(b["y"]) for b in boxes}
            # A phone stacks the three charts; wider windows put them side by side.
            assert len(tops) == (3 if width < 640 else 1), (width, boxes)
            page.screenshot(path=str(shots / f"stream-charts-{width}.png"), full_page=True)
            screenshot(page.context, f"stream-charts-{width}")
    assert sorted(p.name for p in shots.iterdir()) == [f"stream-charts-{w}.png" for w in (1280, 390, 768)]


def test_page_says_so_when_no_function_streamed(charted: Platform, open_browser: OpenBrowser, tmp_path: Path) -> None:
    charted.deploy("silent", charted.write_function(tmp_path, "silent", ENDLESS))
    page = open_browser(("admin", charted.password)).pages[0]
    page.goto(charted.url + "/ui/")
    expect(page.locator('tr[data-function="silent"]')).to_be_visible()
    expect(page.locator("#streams-window")).to_contain_text("last 5 minutes")
    expect(page.locator('article[data-function="silent"]')).to_have_count(0)
    expect(page.locator("#streams-error")).to_be_hidden()
