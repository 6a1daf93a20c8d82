"""Resumable streams across gateways (issue 14): with the NATS queue, a stream begun on one
gateway resumes on another from JetStream's copy of its journal, and the function runs once,
on the first gateway only; a client still reading on the second keeps it from being stopped."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse
from queue_fixture import NatsServer, queue_args

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from test_resume import ANSWER, RESUME, _pairs  # noqa: E402

from platform_fixture import Platform, Signals, wait_for  # noqa: E402


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory, nats_server: NatsServer) -> Iterator[tuple[Platform, Platform, Signals]]:
    root = tmp_path_factory.mktemp("resume")
    signals = Signals()
    extra = queue_args("nats", nats_server.url, "STREAMFAAS_RESUME")
    one = two = None
    try:
        one = Platform(root / "one", extra).start()
        two = Platform(root / "two", extra).start()
        for p in (one, two):
            p.deploy("answer", p.write_function(root / p.state_dir.name, "answer", ANSWER), env={
                "SIGNALS": signals.url, **RESUME, "resume_grace": "2s"})
        yield one, two, signals
    finally:
        for p in (one, two):
            if p is not None:
                p.close()
        signals.close()


def _first_two_events(url: str) -> tuple[str, list[ServerSentEvent]]:
    """Open a stream, read its first two events and leave: its X-Stream-Id and those events."""
    with httpx.Client(timeout=30) as client, connect_sse(client, "GET", url) as es:
        first = []
        for event in es.iter_sse():
            first.append(event)
            if len(first) == 2:
                break
        return es.response.headers["X-Stream-Id"], first


def test_a_stream_begun_on_one_gateway_resumes_on_another_and_the_function_ran_once(
    gateways: tuple[Platform, Platform, Signals]
) -> None:
    one, two, signals = gateways
    query = "?gate=across"
    stream_id, first = _first_two_events(one.function_url("answer") + query)
    # Resume on the other gateway before the function goes on: the journal so far from
    # JetStream, then the live tail, while the function (waiting on the gate) runs on gateway one.
    with httpx.Client(timeout=30) as client, connect_sse(
        client, "GET", two.function_url("answer") + query, headers={"Last-Event-ID": first[-1].id}
    ) as es:
        assert es.response.status_code == 200 and es.response.headers["X-Stream-Id"] == stream_id
        events = es.iter_sse()
        third = next(events)
        # Longer than the function's resume_grace (2 s): a reader on gateway two keeps it going.
        with pytest.raises(AssertionError):
            signals.wait_marks("closed-across", timeout=4)
        signals.open("across")
        rest = [third, *events]
    assert [e.data for e in first + rest] == ["1 ", "2 ", "3 ", "4 ", "5 ", "6 ", "end"]
    assert _pairs(rest)[-1] == ("done", "end")
    assert len(signals.marks("run-across")) == 1  # gateway two's replica was never called
    signals.wait_marks("finished-across")


def test_clients_resuming_one_stream_at_once_on_another_gateway_all_resume(
    gateways: tuple[Platform, Platform, Signals]
) -> None:
    # The first resume on gateway two begins its copy from JetStream; the others, a moment
    # later, joined that copy before it had read up to their event, and got a 404 ("has no
    # event"). Large events (300 kB) make the copy take long enough to be joined midway.
    one, two, signals = gateways
    query = "?gate=together&size=300000"
    _, first = _first_two_events(one.function_url("answer") + query)
    clients = 8
    start = threading.Barrier(clients)
    answered = [threading.Event() for _ in range(clients)]
    got: list[object] = [None] * clients

    def resume(i: int) -> None:
        try:
            start.wait(10)
            with httpx.Client(timeout=30) as client, connect_sse(
                client, "GET", two.function_url("answer") + query, headers={"Last-Event-ID": first[-1].id}
            ) as es:
                answered[i].set()
                if es.response.status_code != 200:
                    got[i] = (es.response.status_code, es.response.read())
                    return
                got[i] = [e.data.split(" ")[0] for e in es.iter_sse()]  # "3 xxx…": the event's number
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            got[i] = exc
        finally:
            answered[i].set()

    threads = [threading.Thread(target=resume, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: all(a.is_set() for a in answered), 30, what="every resume's answer")
    finally:
        signals.open("together")  # the function goes on past event 3
        for t in threads:
            t.join(30)
    assert got == [["3", "4", "5", "6", "end"]] * clients
    assert len(signals.marks("run-together")) == 1


def test_an_unknown_stream_is_a_404_on_every_gateway(gateways: tuple[Platform, Platform, Signals]) -> None:
    one, two, _ = gateways
    for p in (one, two):
        r = httpx.get(p.function_url("answer") + "?gate=nope", headers={"Last-Event-ID": "BBBBBBBBBBBBBBBB:2"}, timeout=30)
        assert r.status_code == 404 and r.json()["error"]["reason"] == "unknown"



OWN_IDS = 'from flask import Response\n\ndef handle(req):\n    return Response(("id: m%d\\ndata: secret-%d\\n\\n" % (n, n) for n in range(5)), mimetype="text/event-stream")\n'


@pytest.mark.parametrize("wildcard", [">", "*", "a.>"])
def test_a_wildcard_stream_id_reads_no_other_stream_from_jetstream(
    gateways: tuple[Platform, Platform, Signals], tmp_path: Path, wildcard: str
) -> None:
    # A stream id names a JetStream subject, where "*" or ">" would match every stream: with a
    # function's own, guessable event ids, that would hand anyone the other clients' answers.
    one, two, _ = gateways
    for p in (one, two):
        p.deploy("own-ids", p.write_function(tmp_path / p.state_dir.name, "own-ids", OWN_IDS), env=RESUME)
    with httpx.Client(timeout=30) as client, connect_sse(client, "GET", one.function_url("own-ids")) as es:
        assert [e.data for e in es.iter_sse()][-1] == "secret-4"  # the victim's stream, in JetStream now
    r = httpx.get(two.function_url("own-ids"), headers={"Last-Event-ID": "m2", "X-Stream-Id": wildcard}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["reason"] == "unknown", r.text
    assert "secret" not in r.text
