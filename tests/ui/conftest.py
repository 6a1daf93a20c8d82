"""Real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, for the UI tests.

Playwright's own browser download is impossible here, so it launches the system Chromium via
``executable_path``. Each browser gets a fresh user-data dir and is closed after its test; the
module checks that no Chromium process outlives it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Playwright, sync_playwright

from platform_fixture import alive, descendants, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

OpenBrowser = Callable[..., BrowserContext]


def _chromium_processes() -> set[int]:
    found = set()
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0]
        except OSError:
            continue
        if b"chrom" in argv0 and alive(pid):
            found.add(pid)
    return found


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)")
    with sync_playwright() as p:
        yield p
    wait_for(lambda: not _chromium_processes(), 15, what="Chromium processes to exit")


@pytest.fixture
def open_browser(playwright: Playwright, tmp_path: Path) -> Iterator[OpenBrowser]:
    """Start a headless Chromium with a fresh profile; ``credentials`` are its basic-auth login."""
    contexts: list[BrowserContext] = []

    def open_browser(
        credentials: tuple[str, str] | None = None, viewport: tuple[int, int] = (1200, 800)
    ) -> BrowserContext:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=tmp_path / f"chromium-profile-{len(contexts)}",
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            http_credentials={"username": credentials[0], "password": credentials[1]}
            if credentials
            else None,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        return context

    yield open_browser
    for context in contexts:
        context.close()


@pytest.fixture
def screenshot() -> Callable[[BrowserContext, str], None]:
    """Save a page's screenshot when UI_SCREENSHOTS names a folder (to look at the page)."""

    def take(context: BrowserContext, name: str) -> None:
        folder = os.environ.get("UI_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            context.pages[0].screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)

    return take
