"""README promises that no other test proves, each over real processes (sandboxed by default)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from platform_fixture import Platform, Signals

# Reads the first line of its stdin, tells the test, then echoes the whole body.
READER = """
import os, sys, urllib.request
first = sys.stdin.buffer.readline()
urllib.request.urlopen(os.environ["SIGNALS"] + "/mark/" + sys.argv[1], first).read()
rest = sys.stdin.buffer.read()
sys.stdout.buffer.write(b"got: " + first + rest)
"""


def _deploy_files(p: Platform, root: Path, name: str, files: dict[str, str], env: dict[str, str], fprocess: str | None = None) -> None:
    folder = root / name
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(textwrap.dedent(text))
    folder.mkdir(parents=True, exist_ok=True)
    p.images.build(f"{name}:latest", "python3-flask", folder)
    body: dict[str, Any] = {"service": name, "image": f"{name}:latest", "envVars": env}
    if fprocess is not None:
        body["envProcess"] = fprocess
    r = p.http.post(f"{p.url}/system/functions", json=body)
    assert r.status_code == 202, r.text
    p.wait_ready(name)


def test_unbuffered_body_reaches_the_function_as_it_comes(shared_platform: Platform, shared_signals: Signals, tmp_path: Path) -> None:
    """buffer_body: false (the default): the body is passed on as the client sends it. The client
    sends its second part only after the function has read the first: a gateway or watchdog
    that held the body back would deadlock here, and the test fail at the deadline."""
    p = shared_platform
    _deploy_files(p, tmp_path, "bodyreader", {"reader.py": READER}, {"mode": "streaming", "SIGNALS": shared_signals.url},
                  "python function/reader.py first-part-read")

    def body() -> Iterator[bytes]:
        yield b"part one\n"
        assert shared_signals.wait_marks("first-part-read", timeout=20) == [b"part one\n"]
        yield b"part two\n"

    r = httpx.post(p.function_url("bodyreader"), content=body(), timeout=60)
    assert r.status_code == 200, r.text
    assert r.text == "got: part one\npart two\n"


def test_handler_returning_body_and_status_sets_the_status(shared_platform: Platform, tmp_path: Path) -> None:
    p = shared_platform
    code = "def handle(req):\n    if req == 'plain':\n        return 'just text'\n    return 'made ' + req, 201\n"
    p.deploy("twotuple", p.write_function(tmp_path, "twotuple", code))
    r = httpx.post(p.function_url("twotuple"), content=b"it", timeout=30)
    assert (r.status_code, r.text) == (201, "made it")
    r = httpx.post(p.function_url("twotuple"), content=b"plain", timeout=30)
    assert (r.status_code, r.text) == (200, "just text")


def test_static_path_under_home_app_is_the_images_folder(shared_platform: Platform, tmp_path: Path) -> None:
    p = shared_platform
    files = {"www/index.html": "<p>from www</p>\n", "public/index.html": "<p>from public</p>\n"}
    _deploy_files(p, tmp_path, "homeapp", files, {"mode": "static", "static_path": "/home/app/function/www"})
    r = httpx.get(p.function_url("homeapp") + "/", timeout=30)
    assert (r.status_code, r.text) == (200, "<p>from www</p>\n")
    # Without static_path: the handler's public/ folder.
    _deploy_files(p, tmp_path, "defaultstatic", files, {"mode": "static"})
    assert httpx.get(p.function_url("defaultstatic") + "/index.html", timeout=30).text == "<p>from public</p>\n"


# Blocks at import until the test opens "never" (it does not): the replica never gets ready.
SLOW_START = """
import os, urllib.request
urllib.request.urlopen(os.environ["SIGNALS"] + "/wait/never?timeout=60", timeout=70).read()

def handle(req):
    return "late"
"""


def test_function_not_ready_within_the_cold_start_wait_is_503(tmp_path: Path, signals: Signals) -> None:
    p = Platform(tmp_path / "state", ("--cold-start-timeout", "1s")).start()
    try:
        p.deploy("sleepy", p.write_function(tmp_path, "sleepy", SLOW_START), env={"SIGNALS": signals.url}, wait=False)
        r = httpx.post(p.function_url("sleepy"), content=b"x", timeout=30)
        assert r.status_code == 503, r.text
        assert "not ready" in r.text and r.text.count("\n") == 1
    finally:
        p.close()
