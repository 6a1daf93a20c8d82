"""Heartbeats (``: ping``) and the ``retry:`` hint the gateway adds to event streams, through
gateway → watchdog → python3-flask function over real sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from platform_fixture import Platform, Signals

# Event one, then a pause that ends only when the test opens GATE (20 s at most), then event
# two: the test opens it after it has seen the heartbeats, so nothing here depends on timing.
GATED = """
import os, urllib.error, urllib.request
from flask import Response

def handle(req):
    url = os.environ["SIGNALS"] + "/wait/" + os.environ["GATE"] + "?timeout=20"

    def gen():
        yield "data: one\\n\\n"
        try:
            urllib.request.urlopen(url).read()
        except urllib.error.HTTPError:
            yield "data: gave-up\\n\\n"
            return
        yield "data: two\\n\\n"
        yield "event: done\\ndata: end\\n\\n"

    return Response(gen(), mimetype="text/event-stream")
"""

# The function's own chunks, with pauses of PAUSE seconds where the list says "PAUSE".
SCRIPTED = """
import json, os, time
from flask import Response

def handle(req):
    parts = json.loads(os.environ["PARTS"])
    pause = float(os.environ.get("PAUSE", "0"))

    def gen():
        for part in parts:
            if part == "PAUSE":
                time.sleep(pause)
            else:
                yield part

    return Response(gen(), mimetype=os.environ.get("MIME", "text/event-stream"))
"""

PAUSED_STREAM = ["data: one\n\n", "PAUSE", "id: 7\nevent: note\ndata: two\ndata: lines\n\n", "PAUSE", "event: done\ndata: end\n\n"]


@pytest.fixture(scope="module")
def handlers(tmp_path_factory: pytest.TempPathFactory, shared_platform: Platform) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("functions")
    yield {
        "gated": shared_platform.write_function(root, "gated", GATED),
        "scripted": shared_platform.write_function(root, "scripted", SCRIPTED),
    }


def _raw(platform: Platform, name: str) -> str:
    with httpx.stream("GET", platform.function_url(name), timeout=30) as r:
        assert r.status_code == 200
        return r.read().decode()


def _events(platform: Platform, name: str) -> list[ServerSentEvent]:
    with httpx.Client(timeout=30) as client, connect_sse(client, "GET", platform.function_url(name)) as es:
        return list(es.iter_sse())


def _deploy_scripted(platform: Platform, handlers: dict[str, Path], name: str, parts: list[str], **env: str) -> None:
    platform.deploy(name, handlers["scripted"], env={"PARTS": json.dumps(parts), **env})


def test_heartbeats_arrive_during_a_pause_between_events(
    shared_platform: Platform, shared_signals: Signals, handlers: dict[str, Path]
) -> None:
    shared_platform.deploy("hb-gated", handlers["gated"], env={
        "SIGNALS": shared_signals.url, "GATE": "hb-gated", "heartbeat_interval": "300ms",
    })
    with httpx.stream("GET", shared_platform.function_url("hb-gated"), timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines) == "retry: 3000"  # the hint, once, on the first event
        assert next(lines) == "data: one"
        assert next(lines) == ""
        pings = 0
        while pings < 2:
            line = next(lines)
            assert line in (": ping", ""), line  # nothing but heartbeats while the function waits
            pings += line == ": ping"
        shared_signals.open("hb-gated")
        rest = list(lines)
    # After the pause the events come as the function wrote them; no second retry hint.
    assert [line for line in rest if line and line != ": ping"] == ["data: two", "event: done", "data: end"]


def test_a_strict_parser_sees_the_same_events_with_and_without_heartbeats(
    shared_platform: Platform, handlers: dict[str, Path]
) -> None:
    # Each pause is 4 heartbeat intervals: heartbeats are sent, and must not show as events.
    _deploy_scripted(shared_platform, handlers, "hb-on", PAUSED_STREAM, PAUSE="1.2", heartbeat_interval="0.3s")
    _deploy_scripted(shared_platform, handlers, "hb-off", PAUSED_STREAM, PAUSE="1.2", heartbeat_interval="0")
    raw_on = _raw(shared_platform, "hb-on")
    assert raw_on.count(": ping\n") >= 2
    assert ": ping" not in _raw(shared_platform, "hb-off")
    on = _events(shared_platform, "hb-on")
    off = _events(shared_platform, "hb-off")
    assert [(e.event, e.data, e.id, e.retry) for e in on] == [(e.event, e.data, e.id, e.retry) for e in off]
    assert [(e.event, e.data, e.id) for e in on] == [("message", "one", ""), ("note", "two\nlines", "7"), ("done", "end", "7")]
    assert on[0].retry == 3000


def test_a_heartbeat_never_splits_an_event(shared_platform: Platform, handlers: dict[str, Path]) -> None:
    # Pauses after a line end inside an event, after half a line, and between the two ends of
    # a boundary written as two chunks: each longer than a heartbeat interval.
    parts = ["event: x\ndata: a\n", "PAUSE", "data: b", "PAUSE", "c\n", "PAUSE", "\n", "PAUSE", "data: next\n\n"]
    _deploy_scripted(shared_platform, handlers, "hb-split", parts, PAUSE="0.5", heartbeat_interval="0.2s")
    body = _raw(shared_platform, "hb-split")
    event, rest = body.split("\n\n", 1)
    assert event == "retry: 3000\nevent: x\ndata: a\ndata: bc"
    # At the boundary the function paused again; heartbeats may come there, between events.
    assert rest.replace(": ping\n", "") == "data: next\n\n"


def test_heartbeats_do_not_keep_a_silent_function_alive(shared_platform: Platform, handlers: dict[str, Path]) -> None:
    parts = ["data: one\n\n", "PAUSE", "data: never\n\n"]
    _deploy_scripted(shared_platform, handlers, "hb-idle", parts, PAUSE="20", heartbeat_interval="0.2s", idle_timeout="1s")
    events = _events(shared_platform, "hb-idle")
    assert [e.data for e in events[:1]] == ["one"]
    assert events[-1].event == "error"
    assert "no data for 1s" in events[-1].json()["error"]["message"]
    assert len(events) == 2


def test_the_functions_own_retry_is_kept_and_none_is_added(shared_platform: Platform, handlers: dict[str, Path]) -> None:
    _deploy_scripted(shared_platform, handlers, "own-retry", [": hello\nretry: 500\n\n", "data: x\n\n"])
    assert _raw(shared_platform, "own-retry") == ": hello\nretry: 500\n\ndata: x\n\n"


@pytest.mark.parametrize(("setting", "expected"), [("0", "data: x\n\n"), ("1500ms", "retry: 1500\ndata: x\n\n")])
def test_sse_retry_is_configurable(shared_platform: Platform, handlers: dict[str, Path], setting: str, expected: str) -> None:
    name = "retry-" + setting
    _deploy_scripted(shared_platform, handlers, name, ["data: x\n\n"], sse_retry=setting)
    assert _raw(shared_platform, name) == expected


def test_other_responses_get_neither_hint_nor_heartbeat(shared_platform: Platform, handlers: dict[str, Path]) -> None:
    parts = ["line one\n\n", "PAUSE", "line two\n"]
    _deploy_scripted(shared_platform, handlers, "plain", parts, PAUSE="0.6", MIME="text/plain", heartbeat_interval="0.2s")
    assert _raw(shared_platform, "plain") == "line one\n\nline two\n"


@pytest.mark.parametrize(("key", "value"), [("heartbeat_interval", "often"), ("heartbeat_interval", "10ms"), ("sse_retry", "-1")])
def test_bad_stream_settings_are_refused_at_deploy(shared_platform: Platform, handlers: dict[str, Path], key: str, value: str) -> None:
    shared_platform.images.build("bad-setting:latest", "python3-flask", handlers["scripted"])
    body = {"service": "bad-setting", "image": "bad-setting:latest", "envVars": {key: value}}
    r = shared_platform.http.post(f"{shared_platform.url}/system/functions", json=body)
    assert r.status_code == 400
    assert key in r.text


def test_an_event_stream_with_a_length_gets_the_hint_and_all_of_its_bytes(shared_platform: Platform, tmp_path: Path) -> None:
    # Flask gives a str body a Content-Length: the gateway added its retry line in front and kept
    # that length, so the client lost the stream's last bytes (the event's blank line) silently.
    whole = 'from flask import Response\n\ndef handle(req):\n    return Response(\'data: {"content": "hi"}\\n\\n\', mimetype="text/event-stream")\n'
    shared_platform.deploy("sized-events", shared_platform.write_function(tmp_path, "sized-events", whole))
    r = httpx.get(shared_platform.function_url("sized-events"), timeout=30)
    assert r.status_code == 200
    assert r.content == b'retry: 3000\ndata: {"content": "hi"}\n\n'
    assert "Content-Length" not in r.headers or int(r.headers["Content-Length"]) == len(r.content)
