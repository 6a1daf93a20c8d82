"""The gateway's per-function stream metrics, read from /metrics after real streams through
gateway → watchdog → function."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from platform_fixture import Platform, Signals, wait_for

# Three events and a done event, or (FOREVER) events until the client goes away.
STREAMER = """
import json, os, time
from flask import Response

def handle(req):
    forever = os.environ.get("FOREVER") == "1"
    pause = float(os.environ.get("PAUSE", "0"))

    def gen():
        for i in range(3):
            yield f"data: {i}\\n\\n"
        if pause:
            time.sleep(pause)
        while forever:
            yield "data: more\\n\\n"
            time.sleep(0.02)
        yield "event: done\\ndata: end\\n\\n"

    return Response(gen(), mimetype="text/event-stream")
"""


def _samples(platform: Platform, function: str) -> dict[str, float]:
    """``{name{label=…}: value}`` of the stream metrics of ``function``."""
    r = httpx.get(f"{platform.url}/metrics", timeout=30)
    assert r.status_code == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            if s.labels.get("function_name") != function or not (s.name.startswith("gateway_stream") or "ttfb" in s.name):
                continue
            extra = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k not in ("function_name", "le"))
            if "le" in s.labels:
                continue  # buckets: the _count and _sum say enough here
            out[f"{s.name}{{{extra}}}" if extra else s.name] = s.value
    return out


@pytest.fixture
def streamer(tmp_path: Path, platform: Platform) -> Path:
    return platform.write_function(tmp_path, "streamer", STREAMER)


def test_a_complete_stream_is_counted(platform: Platform, streamer: Path) -> None:
    platform.deploy("counted", streamer, env={"sse_retry": "0"})
    r = httpx.get(platform.function_url("counted"), timeout=30)
    body = r.content
    assert body.count(b"\n\n") == 4
    m = _samples(platform, "counted")
    assert m["gateway_function_ttfb_seconds_count"] == 1
    assert 0 < m["gateway_function_ttfb_seconds_sum"] < 30
    assert m["gateway_stream_duration_seconds_count"] == 1
    assert m["gateway_streams_open"] == 0
    assert m["gateway_stream_bytes_total"] == len(body)  # sse_retry 0: the body is the function's alone
    assert m["gateway_stream_events_total"] == 4
    assert not any(k.startswith("gateway_stream_disconnects_total") for k in m)


def test_open_streams_and_a_client_disconnect(platform: Platform, streamer: Path) -> None:
    platform.deploy("endless", streamer, env={"FOREVER": "1"})
    with httpx.stream("GET", platform.function_url("endless"), timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines) == "retry: 3000"
        assert next(lines) == "data: 0"
        assert _samples(platform, "endless")["gateway_streams_open"] == 1
    # The client went away; the gateway notices at once (its handler is cancelled).
    m = wait_for(
        lambda: (s := _samples(platform, "endless")).get("gateway_stream_disconnects_total{side=client}") and s,
        10, what="the client disconnect to be counted",
    )
    assert m["gateway_streams_open"] == 0
    assert m["gateway_stream_duration_seconds_count"] == 1
    assert m["gateway_stream_events_total"] >= 3
    assert "gateway_stream_disconnects_total{side=function}" not in m


def test_a_stream_cut_by_the_idle_limit_counts_as_timeout(platform: Platform, streamer: Path) -> None:
    platform.deploy("stalled", streamer, env={"PAUSE": "20", "idle_timeout": "1s"})
    r = httpx.get(platform.function_url("stalled"), timeout=30)
    assert b"event: error" in r.content
    m = _samples(platform, "stalled")
    assert m["gateway_stream_disconnects_total{side=timeout}"] == 1
    assert m["gateway_streams_open"] == 0


CRASHY = """
import os
from flask import Response

def handle(req):
    def gen():
        yield "data: first\\n\\n"
        os._exit(3)
    return Response(gen(), mimetype="text/event-stream")
"""


def test_a_function_that_dies_mid_stream_counts_as_function(platform: Platform, tmp_path: Path, signals: Signals) -> None:
    platform.deploy("crashy", platform.write_function(tmp_path, "crashy", CRASHY))
    r = httpx.get(platform.function_url("crashy"), timeout=30)
    last = r.text.rstrip("\n").rsplit("\n\n", 1)[-1]
    assert json.loads(last.split("data: ", 1)[1])["error"]["status"] == 502
    m = _samples(platform, "crashy")
    assert m["gateway_stream_disconnects_total{side=function}"] == 1
