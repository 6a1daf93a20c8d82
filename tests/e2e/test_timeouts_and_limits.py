"""Per-function time limits that fit streams, buffer_body and max_inflight, through the gateway."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

from platform_fixture import Platform, Signals

TICKER = """
import os, time
from flask import Response

def handle(req):
    gap = float(os.environ["GAP"])
    count = int(os.environ["COUNT"])
    first_delay = float(os.environ.get("FIRST_DELAY", "0"))
    time.sleep(first_delay)

    def gen():
        for i in range(count):
            yield f"data: {i}\\n\\n"
            time.sleep(gap)
        yield "event: done\\ndata: end\\n\\n"

    return Response(gen(), mimetype=os.environ.get("MIME", "text/event-stream"))
"""


def _events(platform: Platform, name: str) -> list[tuple[str, str]]:
    with httpx.Client(timeout=60) as client, connect_sse(client, "GET", platform.function_url(name)) as es:
        return [(e.event, e.data) for e in es.iter_sse()]


@pytest.fixture
def ticker(tmp_path: Path, platform: Platform) -> Iterator[Path]:
    yield platform.write_function(tmp_path, "ticker", TICKER)


def test_idle_limit_stops_a_stalled_stream(platform: Platform, ticker: Path) -> None:
    platform.deploy("ticker", ticker, env={"GAP": "5", "COUNT": "3", "idle_timeout": "1s"})
    events = _events(platform, "ticker")
    assert events[0] == ("message", "0")
    assert events[-1][0] == "error"
    error = json.loads(events[-1][1])["error"]
    assert "no data for 1s" in error["message"]
    assert error["status"] == 504  # the status the request would have had before its headers
    assert len(events) == 2


def test_total_limit_stops_a_long_stream(platform: Platform, ticker: Path) -> None:
    platform.deploy("ticker", ticker, env={"GAP": "0.1", "COUNT": "200", "exec_timeout": "1500ms"})
    events = _events(platform, "ticker")
    assert events[-1][0] == "error"
    error = json.loads(events[-1][1])["error"]
    assert "exceeded the 1.5s limit" in error["message"]
    assert error["status"] == 504
    assert 3 < len(events) < 100


def test_slow_stream_outlives_write_and_idle_limits(platform: Platform, ticker: Path) -> None:
    # Each gap is under the idle limit, and the whole stream lasts far longer than write_timeout
    # (which bounds only the wait for the response headers): it must not be cut.
    platform.deploy(
        "ticker", ticker, env={"GAP": "0.3", "COUNT": "10", "idle_timeout": "2s", "write_timeout": "1s", "exec_timeout": "1m"}
    )
    events = _events(platform, "ticker")
    assert [d for _, d in events[:-1]] == [str(i) for i in range(10)]
    assert events[-1] == ("done", "end")


def test_slow_headers_give_504(platform: Platform, ticker: Path) -> None:
    platform.deploy("ticker", ticker, env={"GAP": "0", "COUNT": "1", "FIRST_DELAY": "5", "write_timeout": "1s"})
    r = httpx.get(platform.function_url("ticker"), timeout=30)
    assert r.status_code == 504
    assert "did not answer within 1s" in r.text


def test_plain_stream_cut_by_idle_limit_is_aborted(platform: Platform, ticker: Path) -> None:
    platform.deploy("ticker", ticker, env={"GAP": "5", "COUNT": "3", "idle_timeout": "1s", "MIME": "text/plain"})
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(platform.function_url("ticker"), timeout=30)


ECHO_FRAMING = """
from flask import request

def handle(req):
    te = request.environ.get("HTTP_TRANSFER_ENCODING", "")
    return f"{request.environ.get('CONTENT_LENGTH')}|{te}|{len(req)}"
"""


@pytest.mark.parametrize("buffer_body", ["true", "false"])
def test_buffer_body_sends_a_sized_body(platform: Platform, tmp_path: Path, buffer_body: str) -> None:
    handler = platform.write_function(tmp_path, "framing", ECHO_FRAMING)
    platform.deploy("framing", handler, env={"buffer_body": buffer_body})

    def chunks() -> Iterator[bytes]:
        yield b"abc"
        yield b"defg"

    r = httpx.post(platform.function_url("framing"), content=chunks(), timeout=30)
    assert r.status_code == 200
    length, _te, size = r.text.split("|")
    assert size == "7"
    if buffer_body == "true":
        assert length == "7"  # the watchdog read it all and sent it with a Content-Length


# Marks "started", then holds the request until the test opens "gate" (20 s at most).
BLOCKER = """
import os, urllib.error, urllib.request

def handle(req):
    signals = os.environ["SIGNALS"]
    urllib.request.urlopen(signals + "/mark/started", b"").read()
    try:
        urllib.request.urlopen(signals + "/wait/gate?timeout=20").read()
    except urllib.error.HTTPError:
        return "never released", 500
    return "released"
"""


def test_max_inflight_answers_429(platform: Platform, signals: Signals, tmp_path: Path) -> None:
    handler = platform.write_function(tmp_path, "single", BLOCKER)
    platform.deploy("single", handler, env={"SIGNALS": signals.url, "max_inflight": "1"})
    results: list[int] = []
    first = threading.Thread(target=lambda: results.append(httpx.get(platform.function_url("single"), timeout=30).status_code))
    first.start()
    try:
        signals.wait_marks("started")  # the first request reached the function
        r = httpx.get(platform.function_url("single"), timeout=30)
        assert r.status_code == 429
        assert "max_inflight=1" in r.text
    finally:
        signals.open("gate")
        first.join(30)
    assert results == [200]
