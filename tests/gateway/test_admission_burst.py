"""Admission per event-loop turn, end to end: with the gateway admitting one new request a turn
(and each watchdog 16), a burst of streams opened at once all complete, whole and in order; the
ones waiting their turn are not lost or starved. What it buys is measured in bench_burst.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from platform_fixture import Platform

THREE = """
import time
from flask import Response

def handle(req):
    def gen():
        for i in range(3):
            yield f"data: {i}\\n\\n"
            time.sleep(0.01)
    return Response(gen(), mimetype="text/event-stream")
"""


@pytest.fixture
def one_a_turn(tmp_path: Path) -> Iterator[Platform]:
    with Platform(tmp_path / "state", ("--admit-per-turn", "1")).start() as p:
        yield p


def test_a_burst_admitted_one_a_turn_completes_every_stream(one_a_turn: Platform, tmp_path: Path) -> None:
    p = one_a_turn
    folder = p.write_function(tmp_path, "three", THREE)
    p.deploy("three", folder, env={"sse_retry": "0", "threads": "80"})

    async def burst() -> list[bytes]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def one() -> bytes:
                r = await client.get(p.function_url("three"))
                assert r.status_code == 200
                return r.content

            return await asyncio.gather(*(one() for _ in range(60)))

    bodies = asyncio.run(burst())
    assert bodies == [b"data: 0\n\ndata: 1\n\ndata: 2\n\n"] * 60


def test_admit_per_turn_must_not_be_negative(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "streamfaas.cli", "--state-dir", str(tmp_path), "gateway", "--port", "0", "--admit-per-turn", "-1"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2
    assert "--admit-per-turn" in r.stderr
    assert "Traceback" not in r.stderr
