"""Resumable streams (``stream_resume: true``), through gateway → watchdog → python3-flask over
real sockets: a client that drops mid-answer and comes back with ``Last-Event-ID`` gets the
rest, the function having run once; the journal's limits and fallbacks answer as documented."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from platform_fixture import Platform, Signals, wait_for

# Events 1..COUNT (the 4th waits for the test to open GATE), then "done". Every run, every end
# and every close of the generator is marked, so the test knows how often the function ran and
# whether it was stopped.
ANSWER = """
import os, time, urllib.request
from flask import Response, request

def _mark(name):
    urllib.request.urlopen(urllib.request.Request(os.environ["SIGNALS"] + "/mark/" + name, data=b""), timeout=10).read()

def handle(req):
    gate = request.args.get("gate", "none")
    count = int(request.args.get("count", "6"))
    size = int(request.args.get("size", "0"))
    tick = float(request.args.get("tick", "0"))
    wait = request.args.get("wait") != "no"  # read here: the generator runs after the request context
    _mark("run-" + gate)

    def gen():
        try:
            for n in range(1, count + 1):
                if n == 4 and wait:
                    urllib.request.urlopen(os.environ["SIGNALS"] + "/wait/" + gate + "?timeout=30", timeout=40).read()
                time.sleep(tick)
                yield "event: token\\ndata: %d %s\\n\\n" % (n, "x" * size)
            yield "event: done\\ndata: end\\n\\n"
            _mark("finished-" + gate)
        finally:
            _mark("closed-" + gate)

    return Response(gen(), mimetype="text/event-stream")
"""
RESUME = {"stream_resume": "true", "sse_retry": "100ms", "resume_grace": "20s"}


@pytest.fixture(scope="module")
def answer(tmp_path_factory: pytest.TempPathFactory, shared_platform: Platform, shared_signals: Signals) -> Iterator[str]:
    handler = shared_platform.write_function(tmp_path_factory.mktemp("functions"), "answer", ANSWER)
    shared_platform.deploy("answer", handler, env={"SIGNALS": shared_signals.url, **RESUME})
    yield "answer"


def _handler(platform: Platform, tmp: Path) -> Path:
    return platform.write_function(tmp, "answer", ANSWER)


def _pairs(events: list[ServerSentEvent]) -> list[tuple[str, str]]:
    return [(e.event, e.data) for e in events]


def _read_until(platform: Platform, url: str, n: int, signals: Signals, gate: str) -> tuple[list[ServerSentEvent], str]:
    """Read ``n`` events, then drop the connection; returns them and the stream id header."""
    with httpx.Client(timeout=30) as client, connect_sse(client, "GET", url) as es:
        assert es.response.status_code == 200
        stream_id = es.response.headers["X-Stream-Id"]
        events = []
        for event in es.iter_sse():
            events.append(event)
            if len(events) == n:
                break
    return events, stream_id


def _resume(url: str, last_id: str, headers: dict[str, str] | None = None) -> tuple[httpx.Response, list[ServerSentEvent]]:
    with httpx.Client(timeout=30) as client, connect_sse(client, "GET", url, headers={"Last-Event-ID": last_id, **(headers or {})}) as es:
        if es.response.status_code != 200:
            es.response.read()
            return es.response, []
        return es.response, list(es.iter_sse())


def test_a_dropped_client_resumes_where_it_left_and_the_function_ran_once(
    shared_platform: Platform, shared_signals: Signals, answer: str
) -> None:
    shared_signals.open("whole")
    with httpx.Client(timeout=30) as client, connect_sse(client, "GET", shared_platform.function_url(answer) + "?gate=whole") as es:
        whole = list(es.iter_sse())
    assert _pairs(whole)[-1] == ("done", "end") and len(whole) == 7, _pairs(whole)

    url = shared_platform.function_url(answer) + "?gate=cut"
    first, stream_id = _read_until(shared_platform, url, 3, shared_signals, "cut")
    assert first[0].retry == 100 and first[2].id == f"{stream_id}:3"
    # The client is gone; the function goes on into the journal (no client to cancel it).
    shared_signals.open("cut")
    shared_signals.wait_marks("finished-cut")
    resp, rest = _resume(url, first[-1].id)
    assert resp.status_code == 200 and resp.headers["X-Stream-Id"] == stream_id
    assert _pairs(first + rest) == _pairs(whole)
    assert len(shared_signals.marks("run-cut")) == 1


def test_a_resume_before_the_function_finishes_gets_the_live_tail(
    shared_platform: Platform, shared_signals: Signals, answer: str
) -> None:
    url = shared_platform.function_url(answer) + "?gate=live"
    first, _ = _read_until(shared_platform, url, 2, shared_signals, "live")
    with httpx.Client(timeout=30) as client, connect_sse(client, "GET", url, headers={"Last-Event-ID": first[-1].id}) as es:
        assert es.response.status_code == 200
        events = es.iter_sse()
        third = next(events)
        assert _pairs([third]) == [("token", "3 ")]  # from the journal, the function waiting
        shared_signals.open("live")  # now the rest is made while this client reads
        rest = [third, *events]
    assert [e.data for e in first + rest] == ["1 ", "2 ", "3 ", "4 ", "5 ", "6 ", "end"]
    assert len(shared_signals.marks("run-live")) == 1


def test_a_function_with_no_client_left_is_stopped_after_its_grace(
    shared_platform: Platform, shared_signals: Signals, tmp_path: Path
) -> None:
    shared_platform.deploy("answer-grace", _handler(shared_platform, tmp_path), env={
        "SIGNALS": shared_signals.url, **RESUME, "resume_grace": "500ms",
    })
    url = shared_platform.function_url("answer-grace") + "?gate=grace&count=100000&tick=0.05&wait=no"
    _read_until(shared_platform, url, 2, shared_signals, "grace")
    shared_signals.wait_marks("closed-grace", timeout=15)  # stopped: not left to run (and cost) for ever
    assert not shared_signals.marks("finished-grace")


def test_an_unknown_id_is_a_404_with_a_reason_or_a_fresh_call_when_the_function_says_so(
    shared_platform: Platform, shared_signals: Signals, answer: str, tmp_path: Path
) -> None:
    resp, _ = _resume(shared_platform.function_url(answer) + "?gate=unknown", "AAAAAAAAAAAAAAAA:3")
    assert resp.status_code == 404
    assert resp.json()["error"]["reason"] == "unknown"
    assert not shared_signals.marks("run-unknown")

    shared_platform.deploy("answer-rerun", _handler(shared_platform, tmp_path), env={
        "SIGNALS": shared_signals.url, **RESUME, "resume_fallback": "rerun",
    })
    shared_signals.open("rerun")
    resp, events = _resume(shared_platform.function_url("answer-rerun") + "?gate=rerun", "AAAAAAAAAAAAAAAA:3")
    assert resp.status_code == 200 and _pairs(events)[-1] == ("done", "end") and len(events) == 7
    assert len(shared_signals.marks("run-rerun")) == 1

    metrics = shared_platform.http.get(f"{shared_platform.url}/metrics").text
    assert 'gateway_stream_resumes_total{function_name="answer",result="unknown"} 1.0' in metrics
    assert 'gateway_stream_resumes_total{function_name="answer-rerun",result="rerun"} 1.0' in metrics


def test_a_journal_over_its_byte_limit_drops_its_oldest_events(
    shared_platform: Platform, shared_signals: Signals, tmp_path: Path
) -> None:
    shared_platform.deploy("answer-small", _handler(shared_platform, tmp_path), env={
        "SIGNALS": shared_signals.url, **RESUME, "resume_max_bytes": "1KiB",
    })
    url = shared_platform.function_url("answer-small") + "?gate=small&count=40&size=100&wait=no"
    first, stream_id = _read_until(shared_platform, url, 1, shared_signals, "small")
    shared_signals.wait_marks("finished-small")
    assert first[0].id.startswith(stream_id), first
    # The function is done; the gateway's journal has all of it a moment later (poll till then).
    resp = wait_for(lambda: (r := _resume(url, first[0].id)[0]).status_code != 200 and r, 20, what="event 1 to be dropped")
    assert resp.status_code == 404
    assert resp.json()["error"]["reason"] == "dropped" and "1024 bytes" in resp.json()["error"]["message"]
    resp, rest = _resume(url, f"{stream_id}:38")  # still kept: the last events
    assert resp.status_code == 200
    assert [e.data.split()[0] for e in rest] == ["39", "40", "end"]


def test_an_event_that_never_ends_is_cut_at_the_journals_limit(shared_platform: Platform, tmp_path: Path) -> None:
    # Each event is held whole until its blank line (to give it an id): one that never ends
    # grew the gateway by GiBs, with or without a client attached. Now it is ended at 16 MiB
    # (MAX_EVENT, or resume_max_bytes if larger) with an error event, and the function stopped.
    endless = 'from flask import Response\n\ndef handle(req):\n    def gen():\n        yield "data: start"\n        for _ in range(4096):\n            yield "x" * 16384\n    return Response(gen(), mimetype="text/event-stream")\n'
    shared_platform.deploy("endless-event", shared_platform.write_function(tmp_path, "endless-event", endless),
                           env={**RESUME, "resume_max_bytes": "64KiB"})
    with httpx.Client(timeout=30) as client, client.stream("GET", shared_platform.function_url("endless-event")) as resp:
        assert resp.status_code == 200
        body = b"".join(resp.iter_bytes())
    assert 16 << 20 < len(body) < 17 << 20, len(body)  # not the function's 64 MiB
    assert body.endswith(b"\n\n") and b"event: error" in body
    assert b"an event longer than 16777216 bytes" in body


def test_a_functions_resume_max_bytes_never_lifts_the_gateways_bound_on_unfinished_events(tmp_path: Path) -> None:
    # resume_max_bytes is the function's own setting: at 64 GiB it let one call hold GiBs of an
    # event that never ends. The operator's --resume-journal-bytes bounds one such event, and
    # all of them together: two streams of 3 MiB unfinished events do not fit in 4 MiB.
    endless = ('import time\nfrom flask import Response, request\n\ndef handle(req):\n    n = int(request.args["n"])\n'
               '    def gen():\n        yield "data: start"\n'
               '        for _ in range(n):\n            yield "x" * 16384\n'
               '        time.sleep(30)\n    return Response(gen(), mimetype="text/event-stream")\n')
    platform = Platform(tmp_path / "state", ("--resume-journal-bytes", "4MiB")).start()
    try:
        platform.deploy("huge-event", platform.write_function(tmp_path, "huge-event", endless),
                        env={**RESUME, "resume_max_bytes": "64GiB"})
        url = platform.function_url("huge-event")
        with httpx.Client(timeout=60) as client:
            with client.stream("GET", url + "?n=4096") as resp:  # 64 MiB, one event
                body = b"".join(resp.iter_bytes())
            assert 4 << 20 < len(body) < 5 << 20, len(body)
            assert b"an event longer than 4194304 bytes" in body
            with client.stream("GET", url + "?n=192") as first:  # 3 MiB, then it waits
                it = first.iter_bytes()
                got = next(it)
                while len(got) < 3 << 20:
                    got += next(it)
                second = client.get(url + "?n=192")
            assert b"past what the gateway holds for all resumable streams' unfinished events" in second.content
            assert second.content.endswith(b"\n\n")
    finally:
        platform.close()


def test_a_function_that_sets_its_own_ids_keeps_them_and_resumes_by_them(
    shared_platform: Platform, tmp_path: Path
) -> None:
    own = 'from flask import Response\n\ndef handle(req):\n    return Response(("id: m%d\\ndata: %d\\n\\n" % (n, n) for n in range(5)), mimetype="text/event-stream")\n'
    shared_platform.deploy("own-ids", shared_platform.write_function(tmp_path, "own-ids", own), env=RESUME)
    with httpx.Client(timeout=30) as client, connect_sse(client, "GET", shared_platform.function_url("own-ids")) as es:
        whole = list(es.iter_sse())
        stream_id = es.response.headers["X-Stream-Id"]
    assert [e.id for e in whole] == ["m0", "m1", "m2", "m3", "m4"]
    resp, rest = _resume(shared_platform.function_url("own-ids"), "m2", {"X-Stream-Id": stream_id})
    assert resp.status_code == 200 and [e.data for e in rest] == ["3", "4"]


def test_a_functions_own_id_alone_resumes_no_ones_stream(shared_platform: Platform, tmp_path: Path) -> None:
    # Another caller's stream, with ids anyone can guess ("0", "1", …): without its stream id
    # (the response's X-Stream-Id, 96 random bits) nothing of it comes back.
    own = 'from flask import Response, request\n\ndef handle(req):\n    who = request.args["who"]\n    return Response(("id: %d\\ndata: %s-%d\\n\\n" % (n, who, n) for n in range(3)), mimetype="text/event-stream")\n'
    shared_platform.deploy("guessable-ids", shared_platform.write_function(tmp_path, "guessable-ids", own), env=RESUME)
    url = shared_platform.function_url("guessable-ids")
    with httpx.Client(timeout=30) as client, connect_sse(client, "GET", url + "?who=alice-token") as es:
        assert [e.data for e in es.iter_sse()] == ["alice-token-0", "alice-token-1", "alice-token-2"]
        stream_id = es.response.headers["X-Stream-Id"]
    for guess in ("0", "1"):
        resp, rest = _resume(url + "?who=mallory", guess)
        assert resp.status_code == 404 and resp.json()["error"]["reason"] == "unknown", resp.text
        assert "alice" not in resp.text and stream_id not in resp.text and "X-Stream-Id" in resp.text
        assert "X-Stream-Id" not in resp.headers and rest == []
    resp, rest = _resume(url, "0", {"X-Stream-Id": stream_id})  # the caller who holds the id still can
    assert resp.status_code == 200 and [e.data for e in rest] == ["alice-token-1", "alice-token-2"]


@pytest.mark.parametrize(("key", "value"), [
    ("stream_resume", "maybe"), ("resume_window", "0s"), ("resume_grace", "soon"),
    ("resume_max_bytes", "lots"), ("resume_fallback", "sometimes"),
])
def test_a_bad_resume_setting_is_a_400_at_deploy_naming_it(shared_platform: Platform, key: str, value: str) -> None:
    body = {"service": "bad-resume", "image": "bad-resume:latest", "envVars": {"stream_resume": "true", key: value}}
    r = shared_platform.http.post(f"{shared_platform.url}/system/functions", json=body)
    assert r.status_code == 400 and key in r.text, r.text


def test_a_stream_resumes_only_through_its_own_function_and_a_private_ones_needs_its_token(
    shared_platform: Platform, shared_signals: Signals, answer: str, tmp_path: Path
) -> None:
    shared_platform.deploy("answer-other", _handler(shared_platform, tmp_path), env={"SIGNALS": shared_signals.url, **RESUME})
    shared_platform.deploy("answer-private", _handler(shared_platform, tmp_path / "p"), env={"SIGNALS": shared_signals.url, **RESUME},
                           labels={"streamfaas.auth/private": "true"})
    shared_signals.open("owned")
    first, stream_id = _read_until(shared_platform, shared_platform.function_url(answer) + "?gate=owned", 1, shared_signals, "owned")
    shared_signals.wait_marks("finished-owned")
    # Another function's URL with this stream's id (in Last-Event-ID, or X-Stream-Id): nothing of it.
    for headers in ({}, {"X-Stream-Id": stream_id}):
        resp, events = _resume(shared_platform.function_url("answer-other"), first[0].id, headers)
        assert resp.status_code == 404 and resp.json()["error"]["reason"] == "unknown" and not events
    assert not shared_signals.marks("run-owned")[1:]  # and no call was made for it
    # A private function's stream: a resume is a call like any other, so it needs the token.
    resp, _ = _resume(shared_platform.function_url("answer-private"), first[0].id)
    assert resp.status_code == 401


@pytest.mark.parametrize("hostile", [
    {"Last-Event-ID": ">>>>>>>>>>>>>>>>:1"}, {"Last-Event-ID": "*.*.*.*.*.*.*.*.:1"},
    {"Last-Event-ID": "x", "X-Stream-Id": ">"}, {"Last-Event-ID": "x", "X-Stream-Id": "a.b"},
    {"Last-Event-ID": "x" * 8000}, {"Last-Event-ID": "AAAAAAAAAAAAAAAA:١".encode()},
])
def test_a_hostile_stream_or_event_id_is_a_404_naming_no_stream(
    shared_platform: Platform, answer: str, hostile: dict[str, str | bytes]
) -> None:
    url = shared_platform.function_url(answer) + "?gate=hostile"
    r = httpx.get(url, headers=hostile, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["reason"] == "unknown", r.text
