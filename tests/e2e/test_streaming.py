"""Streaming through gateway → watchdog → python3-flask function, over real sockets."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

from platform_fixture import Platform, Signals

# The function yields one event, then waits for the gate the test opens only after the client
# has received that event. Any buffering on the way deadlocks this, and the test fails at its
# deadline: no timing involved.
GATED = """
import os, urllib.error, urllib.request
from flask import Response

def handle(req):
    signals = os.environ["SIGNALS"]
    mime = os.environ.get("MIME", "text/event-stream")

    def gen():
        yield "data: one\\n\\n"
        try:
            urllib.request.urlopen(signals + "/wait/gate?timeout=20").read()
        except urllib.error.HTTPError:
            yield "data: gave-up\\n\\n"
            return
        yield "data: two\\n\\n"

    return Response(gen(), mimetype=mime)
"""

FOREVER = """
import os, time, urllib.request
from flask import Response

def handle(req):
    signals = os.environ["SIGNALS"]

    def gen():
        try:
            i = 0
            while True:
                yield f"data: {i}\\n\\n"
                i += 1
                time.sleep(0.02)
        finally:
            urllib.request.urlopen(signals + "/mark/closed", b"").read()

    return Response(gen(), mimetype="text/event-stream")
"""

CRASHY = """
import os, time
from flask import Response

def handle(req):
    mime = "text/event-stream" if req.strip() != "plain" else "text/plain"
    def gen():
        yield "data: first\\n\\n"
        if req.strip() == "half":
            yield "data: partial"  # an event it never ends
        if req.strip() != "ok":
            time.sleep(0.05)
            os._exit(3)
        yield "data: second\\n\\n"
    return Response(gen(), mimetype=mime)
"""


def _stream_lines(response: httpx.Response):  # type: ignore[no-untyped-def]
    return response.iter_lines()


@pytest.mark.parametrize("mime", ["text/event-stream", "text/plain"])
def test_chunks_reach_client_before_function_finishes(
    platform: Platform, signals: Signals, tmp_path: Path, mime: str
) -> None:
    handler = platform.write_function(tmp_path, "gated", GATED)
    platform.deploy("gated", handler, env={"SIGNALS": signals.url, "MIME": mime})
    # Plain text with no SSE Accept header: we stream every chunked response, unlike OpenFaaS.
    with httpx.stream("POST", platform.function_url("gated"), content=b"go", timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        if mime == "text/event-stream":
            assert next(lines) == "retry: 3000"  # the gateway's reconnect hint, on the first event
        assert next(lines) == "data: one"
        signals.open("gate")  # only now may the function go on
        rest = [line for line in lines if line]
    assert rest == ["data: two"]


def test_event_stream_headers(platform: Platform, signals: Signals, tmp_path: Path) -> None:
    signals.open("gate")
    handler = platform.write_function(tmp_path, "gated", GATED)
    platform.deploy("gated", handler, env={"SIGNALS": signals.url})
    with httpx.stream(
        "POST",
        platform.function_url("gated"),
        content=b"What are some calorie dense foods?",
        headers={"Content-Type": "text/plain", "Accept": "text/event-stream", "X-Call-Id": "call-123"},
        timeout=30,
    ) as r:
        body = r.read().decode()
    assert r.http_version == "HTTP/1.1"
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["transfer-encoding"] == "chunked"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["x-call-id"] == "call-123"
    assert int(r.headers["x-start-time"]) > 1_600_000_000 * 10**9
    assert r.headers["x-served-by"].startswith("gated[")
    assert body == "retry: 3000\ndata: one\n\ndata: two\n\n"


def test_client_disconnect_runs_generator_finally(platform: Platform, signals: Signals, tmp_path: Path) -> None:
    handler = platform.write_function(tmp_path, "forever", FOREVER)
    platform.deploy("forever", handler, env={"SIGNALS": signals.url})
    with httpx.stream("GET", platform.function_url("forever"), timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines) == "retry: 3000"
        assert next(lines) == "data: 0"
        assert next(lines) == ""
        assert next(lines) == "data: 1"
        assert not signals.marks("closed")
    closed_at = time.monotonic()
    signals.wait_marks("closed", timeout=5)  # the generator's finally ran
    assert time.monotonic() - closed_at < 1.0


def test_crash_mid_stream_sends_error_event_and_replica_recovers(platform: Platform, tmp_path: Path) -> None:
    handler = platform.write_function(tmp_path, "crashy", CRASHY)
    platform.deploy("crashy", handler)
    with httpx.Client(timeout=30) as client, connect_sse(client, "POST", platform.function_url("crashy"), content=b"crash") as es:
        events = list(es.iter_sse())
    assert events[0].data == "first"
    assert events[-1].event == "error"
    assert events[-1].json()["error"]["message"] == "the function closed the stream before finishing"
    # The crashed replica is restarted and serves again.
    platform.wait_ready("crashy")
    r = httpx.post(platform.function_url("crashy"), content=b"ok", timeout=30)
    assert r.status_code == 200
    assert r.text == "retry: 3000\ndata: first\n\ndata: second\n\n"
    assert "restarting" in (platform.state_dir / "logs" / "crashy.log").read_text()


def test_an_error_event_after_an_unfinished_event_is_an_event_of_its_own(platform: Platform, tmp_path: Path) -> None:
    # Written right after "data: partial", the platform's error event was read as more lines of
    # the function's event: the client saw one odd message, and no error.
    handler = platform.write_function(tmp_path, "crashy-half", CRASHY)
    platform.deploy("crashy-half", handler)
    with httpx.Client(timeout=30) as client, connect_sse(client, "POST", platform.function_url("crashy-half"), content=b"half") as es:
        events = list(es.iter_sse())
    assert [(e.event, e.data) for e in events[:2]] == [("message", "first"), ("message", "partial")]
    assert events[-1].event == "error" and len(events) == 3
    assert events[-1].json()["error"]["message"] == "the function closed the stream before finishing"


def test_crash_mid_body_aborts_plain_response(platform: Platform, tmp_path: Path) -> None:
    handler = platform.write_function(tmp_path, "crashy", CRASHY)
    platform.deploy("crashy", handler)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(platform.function_url("crashy"), content=b"plain", timeout=30)


def test_unknown_function_is_404(platform: Platform) -> None:
    r = httpx.post(platform.function_url("nope"), content=b"x", timeout=10)
    assert r.status_code == 404
    assert r.text == "function 'nope' not found\n"
    assert r.headers["x-call-id"]


def test_path_query_and_headers_pass_through(platform: Platform, tmp_path: Path) -> None:
    code = """
    import json
    from flask import request

    def handle(req):
        return json.dumps({
            "path": request.path, "query": request.args.to_dict(), "method": request.method,
            "custom": request.headers.get("X-Custom"), "call": request.headers.get("X-Call-Id"),
            "fwd": request.headers.get("X-Forwarded-For"), "host": request.headers.get("X-Forwarded-Host"),
            "body": req,
        }), 201, {"X-Reply": "yes"}
    """
    handler = platform.write_function(tmp_path, "echo", code)
    platform.deploy("echo", handler)
    r = httpx.put(platform.function_url("echo") + "/a/b?x=1&y=2", content=b"hi", headers={"X-Custom": "c"}, timeout=30)
    assert r.status_code == 201
    assert r.headers["x-reply"] == "yes"
    data = r.json()
    assert data["path"] == "/a/b"
    assert data["query"] == {"x": "1", "y": "2"}
    assert data["method"] == "PUT"
    assert data["custom"] == "c"
    assert data["call"] == r.headers["x-call-id"]
    assert data["fwd"] == "127.0.0.1"
    assert data["host"] == platform.url.removeprefix("http://")
    assert data["body"] == "hi"


def test_metrics_count_invocations_with_openfaas_names(platform: Platform, tmp_path: Path) -> None:
    handler = platform.write_function(tmp_path, "counted", "def handle(req):\n    return 'ok'\n")
    platform.deploy("counted", handler)
    for _ in range(3):
        assert httpx.get(platform.function_url("counted"), timeout=30).status_code == 200
    text = httpx.get(platform.url + "/metrics", timeout=10).text
    assert 'gateway_function_invocation_total{code="200",function_name="counted"} 3.0' in text
    assert 'gateway_function_invocation_started{function_name="counted"} 3.0' in text
    assert 'gateway_functions_seconds_count{code="200",function_name="counted"} 3.0' in text
    assert 'gateway_service_count{function_name="counted"} 1.0' in text


def test_function_dying_before_headers_gives_502(platform: Platform, tmp_path: Path) -> None:
    code = """
    import os

    def handle(req):
        if req == "die":
            os._exit(7)
        return "alive"
    """
    platform.deploy("dier", platform.write_function(tmp_path, "dier", code))
    r = httpx.post(platform.function_url("dier"), content=b"die", timeout=30)
    assert r.status_code == 502
    assert r.text.startswith("upstream unavailable")
    platform.wait_ready("dier")
    assert httpx.post(platform.function_url("dier"), content=b"x", timeout=30).text == "alive"
