"""Direct delivery (``streamfaas/proxy_direct.py``): chunks that arrive one at a time, each
while the copy loop waits for it, are written by the upstream connection's read callback in
both hops (gateway and watchdog). What the client gets and what the metrics count must be
exactly what the plain copy loop gives: the same bytes in the same order, every chunk counted,
and a client that reads slowly still gets every byte (the loop takes over while the client's
buffer is full)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from platform_fixture import Platform

# Events a little apart, so each arrives on its own, while the copy loops wait for it.
SPACED = """
import time
from flask import Response, request

def handle(req):
    count = int(request.args.get("count", "10"))
    size = int(request.args.get("size", "0"))
    gap = float(request.args.get("gap", "0.01"))

    def gen():
        for i in range(count):
            pad = ("x" * size + "\\n") if size else ""
            yield f"id: {i}\\ndata: {pad}event {i}\\n\\n"
            time.sleep(gap)
        yield "event: done\\ndata: end\\n\\n"

    return Response(gen(), mimetype="text/event-stream")
"""


def _expected(count: int, size: int) -> bytes:
    pad = ("x" * size + "\n") if size else ""
    events = [f"id: {i}\ndata: {pad}event {i}\n\n" for i in range(count)]
    return ("".join(events) + "event: done\ndata: end\n\n").encode()


def _counters(platform: Platform, function: str) -> dict[str, float]:
    text = httpx.get(f"{platform.url}/metrics", timeout=30).text
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("function_name") == function
        and s.name in ("gateway_stream_bytes_total", "gateway_stream_events_total")
    }


def test_spaced_events_arrive_exactly_and_are_counted(tmp_path: Path, platform: Platform) -> None:
    folder = platform.write_function(tmp_path, "spaced", SPACED)
    platform.deploy("spaced", folder, env={"sse_retry": "0", "heartbeat_interval": "0"})
    arrivals: list[float] = []
    body = b""
    with httpx.stream(
        "GET", platform.function_url("spaced"), params={"count": 30, "gap": 0.01}, timeout=30
    ) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            arrivals.append(time.monotonic())
            body += chunk
    assert body == _expected(30, 0)
    # The events came one by one (not held back and sent together at the end).
    assert len(arrivals) >= 10
    assert arrivals[-1] - arrivals[0] >= 0.2
    # Every chunk is counted, those written directly too.
    assert _counters(platform, "spaced") == {
        "gateway_stream_bytes_total": len(body),
        "gateway_stream_events_total": 31,
    }


def test_a_slow_reader_gets_every_byte_in_order(tmp_path: Path, platform: Platform) -> None:
    """Events of 64 KiB, faster than the client reads: the client's buffer fills, direct
    delivery stands aside, and the bytes still arrive whole and in order."""
    folder = platform.write_function(tmp_path, "bulky", SPACED)
    platform.deploy("bulky", folder, env={"sse_retry": "0", "heartbeat_interval": "0"})
    count, size = 60, 64 * 1024
    digest = hashlib.sha256()
    received = 0
    with httpx.stream(
        "GET",
        platform.function_url("bulky"),
        params={"count": count, "size": size, "gap": 0.001},
        timeout=60,
    ) as r:
        for i, chunk in enumerate(r.iter_raw(chunk_size=16 * 1024)):
            digest.update(chunk)
            received += len(chunk)
            if i % 16 == 0:
                time.sleep(0.01)  # slower than the function writes
    expected = _expected(count, size)
    assert received == len(expected)
    assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()
    assert _counters(platform, "bulky")["gateway_stream_bytes_total"] == len(expected)
