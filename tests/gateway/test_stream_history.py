"""``GET /system/stream-history``: the gateway's own stream metrics sampled into a ring per
function, read after real streams through gateway → watchdog → function."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from platform_fixture import Platform, wait_for
from streamfaas.gateway.stream_history import bucket_quantile

INTERVAL = 0.2  # seconds between samples; the default (5 s) would make these tests slow

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


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("history")
    p = Platform(root / "state", ("--stream-history-interval", f"{INTERVAL}s")).start()
    try:
        p.deploy("endless", p.write_function(root / "fn", "endless", ENDLESS))
        yield p
    finally:
        p.close()


def history(platform: Platform, **params: str) -> dict[str, Any]:
    r = platform.http.get(f"{platform.url}/system/stream-history", params=params)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def series(platform: Platform, name: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = history(platform)["functions"].get(name)
    return found


def latest(values: list[float | None]) -> float | None:
    return next((v for v in reversed(values) if v is not None), None)


def test_bucket_quantile_interpolates_within_the_bucket_as_prometheus_does() -> None:
    bounds = [0.1, 0.5, 1.0, math.inf]
    # 10 observations: 2 <= 0.1, 6 in (0.1, 0.5], 2 in (0.5, 1.0], none above.
    counts = [2.0, 8.0, 10.0, 10.0]
    assert bucket_quantile(0.5, bounds, counts) == pytest.approx(0.1 + 0.4 * (5 - 2) / 6)
    assert bucket_quantile(0.1, bounds, counts) == pytest.approx(0.05)  # first bucket: from 0
    assert bucket_quantile(0.99, bounds, counts) == pytest.approx(0.5 + 0.5 * (9.9 - 8) / 2)
    # A rank in the +Inf bucket: the largest finite bound, as histogram_quantile answers.
    assert bucket_quantile(0.99, bounds, [0.0, 0.0, 1.0, 5.0]) == 1.0
    assert bucket_quantile(0.5, bounds, [0.0, 0.0, 0.0, 0.0]) is None


def test_history_needs_the_admins_basic_auth(sampled: Platform) -> None:
    url = f"{sampled.url}/system/stream-history"
    r = httpx.get(url, timeout=30)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic ")
    assert httpx.get(url, auth=("admin", sampled.password + "x"), timeout=30).status_code == 401
    body = history(sampled)
    assert body["interval_s"] == INTERVAL
    assert body["window_s"] == 300


def test_history_reports_open_streams_ttfb_and_a_client_disconnect(sampled: Platform) -> None:
    url = sampled.function_url("endless")
    with httpx.stream("GET", url, timeout=30) as first, httpx.stream("GET", url, timeout=30) as second:
        # Both iterators kept: httpx closes a response whose line iterator is dropped.
        readers = [first.iter_lines(), second.iter_lines()]
        for lines in readers:
            assert next(lines) == "retry: 3000"
            assert next(lines) == "data: tick"
        s = wait_for(
            lambda: (s := series(sampled, "endless")) and s["open"][-1] == 2 and sum(s["first_bytes"]) == 2 and s,
            10,
            what="two open streams in the history",
        )
        p50, p99 = latest(s["ttfb_p50_s"]), latest(s["ttfb_p99_s"])
        assert p50 is not None and p99 is not None
        assert 0 < p50 <= p99 < 30
        assert len(s["t"]) == len(s["open"]) == len(s["ttfb_p50_s"]) == len(s["disconnects"]["client"])
        assert s["t"] == sorted(s["t"])
        first.close()  # this client goes away; the other stays
        s = wait_for(
            lambda: (s := series(sampled, "endless")) and sum(s["disconnects"]["client"]) == 1 and s,
            10,
            what="the client disconnect in the history",
        )
        # Counted where it happened: in an interval after the streams were seen open.
        assert s["disconnects"]["client"].index(1) > s["open"].index(2)
        assert sum(s["disconnects"]["function"]) == sum(s["disconnects"]["timeout"]) == 0
        wait_for(lambda: (s := series(sampled, "endless")) and s["open"][-1] == 1, 10, what="one stream open")
    wait_for(
        lambda: (s := series(sampled, "endless")) and s["open"][-1] == 0 and sum(s["disconnects"]["client"]) == 2,
        10,
        what="both disconnects in the history",
    )


def test_quiet_functions_are_left_out_and_removed_ones_dropped(sampled: Platform, tmp_path: Path) -> None:
    sampled.deploy("quiet", sampled.write_function(tmp_path, "quiet", ENDLESS))
    wait_for(lambda: "quiet" in history(sampled, all="1")["functions"], 10, what="quiet's series")
    assert "quiet" not in history(sampled)["functions"]  # no stream in the window
    r = sampled.http.request("DELETE", f"{sampled.url}/system/functions", json={"functionName": "quiet"})
    assert r.status_code == 202, r.text
    wait_for(lambda: "quiet" not in history(sampled, all="1")["functions"], 10, what="quiet's series to go")
