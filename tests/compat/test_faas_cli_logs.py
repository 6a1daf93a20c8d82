"""``faas-cli logs`` (follow, --tail=false, --since, --lines) and go-sdk's GetLogs: GET /system/logs.

faas-cli decodes the NDJSON stream line by line into faas-provider's logs.Message; a line whose
timestamp is not RFC 3339 stops the decoder, and in follow mode faas-cli then hangs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import httpx
import pytest

from go_wire import faas_cli_logs_query, go_sdk_logs_query, go_time, log_message
from platform_fixture import Platform

PRINTER = """
def handle(req):
    print(req, flush=True)
    return "printed"
"""


@pytest.fixture(scope="module")
def printer(shared_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fn")
    shared_platform.deploy("printer", shared_platform.write_function(root, "printer", PRINTER))
    yield "printer"


def _print(platform: Platform, name: str) -> str:
    """Make the function print a fresh marker line; the marker."""
    marker = f"marker-{uuid.uuid4().hex}"
    r = httpx.post(platform.function_url(name), content=marker.encode(), timeout=30)
    assert r.status_code == 200, r.text
    return marker


def _history(platform: Platform, query: str) -> list[dict[str, object]]:
    r = platform.http.get(f"{platform.url}/system/logs?{query}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-ndjson"
    return [log_message(line) for line in r.text.splitlines()]


def _texts(messages: list[dict[str, object]]) -> list[str]:
    return [str(m["text"]) for m in messages]


def test_every_line_decodes_with_an_rfc3339_timestamp_and_an_instance(shared_platform: Platform, printer: str) -> None:
    marker = _print(shared_platform, printer)
    log_file = shared_platform.state_dir / "logs" / f"{printer}.log"
    # Lines no replica stamped, as the watchdog's own output and a venv build write them.
    with open(log_file, "a") as f:
        f.write("watchdog listening on /tmp/streamfaas-x/1.sock\nTraceback (most recent call last):\n")
    messages = _history(shared_platform, faas_cli_logs_query(printer, follow=False))
    assert messages, "no log lines"
    for m in messages:
        assert m["name"] == printer and m["namespace"] == "openfaas-fn"
        assert m["instance"], m
    [printed] = [m for m in messages if str(m["text"]).endswith(marker)]
    assert printed["text"] == f"stdout: {marker}"
    assert str(printed["instance"]).startswith(f"{printer}[")
    unstamped = messages[-2:]
    assert _texts(unstamped) == ["watchdog listening on /tmp/streamfaas-x/1.sock", "Traceback (most recent call last):"]
    # They take the last stamp before them, and the function's name as their instance.
    assert {m["timestamp"] for m in unstamped} == {messages[-3]["timestamp"]}
    assert {m["instance"] for m in unstamped} == {printer}


def test_follow_yields_lines_as_they_are_written(shared_platform: Platform, printer: str) -> None:
    url = f"{shared_platform.url}/system/logs?{faas_cli_logs_query(printer)}"  # `faas-cli logs NAME`
    with shared_platform.http.stream("GET", url, timeout=httpx.Timeout(30)) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for _ in range(2):  # each line arrives while the stream stays open
            marker = _print(shared_platform, printer)
            for line in lines:
                message = log_message(line)
                if str(message["text"]).endswith(marker):
                    assert message["instance"]
                    break
            else:
                raise AssertionError("the stream ended before the line arrived")


def test_tail_false_sends_the_history_and_ends(shared_platform: Platform, printer: str) -> None:
    marker = _print(shared_platform, printer)
    # `faas-cli logs NAME --tail=false`: follow=false; the response ends after the history.
    texts = _texts(_history(shared_platform, faas_cli_logs_query(printer, follow=False)))
    assert f"stdout: {marker}" in texts
    texts = _texts(_history(shared_platform, go_sdk_logs_query(printer, follow=False)))
    assert f"stdout: {marker}" in texts


def test_lines_n_keeps_the_last_n(shared_platform: Platform, printer: str) -> None:
    markers = [_print(shared_platform, printer) for _ in range(3)]
    for query in (faas_cli_logs_query(printer, follow=False, lines=2), go_sdk_logs_query(printer, follow=False, tail=2)):
        messages = _history(shared_platform, query)
        assert len(messages) == 2
        assert _texts(messages)[-1] == f"stdout: {markers[-1]}"


def test_since_keeps_the_lines_from_then_on(shared_platform: Platform, printer: str) -> None:
    marker = _print(shared_platform, printer)
    now = dt.datetime.now(dt.UTC)
    # `faas-cli logs NAME --tail=false --since=10m`: faas-cli sends now-10m as an RFC 3339 time.
    recent = _history(shared_platform, faas_cli_logs_query(printer, follow=False, since=now - dt.timedelta(minutes=10)))
    assert f"stdout: {marker}" in _texts(recent)
    assert all(go_time(m["timestamp"]) >= now - dt.timedelta(minutes=10, seconds=1) for m in recent)
    future = _history(shared_platform, faas_cli_logs_query(printer, follow=False, since=now + dt.timedelta(hours=1)))
    assert future == []
    # A duration is taken too, meaning that long ago.
    assert f"stdout: {marker}" in _texts(_history(shared_platform, f"name={printer}&follow=false&since=10m"))
    assert _history(shared_platform, f"name={printer}&follow=false&since=2000-01-01T00:00:00Z")


def test_bad_follow_since_and_namespace_are_one_line_errors(shared_platform: Platform, printer: str) -> None:
    for query, status, needle in (
        (f"name={printer}&follow=maybe", 400, "follow"),
        (f"name={printer}&since=yesterday", 400, "since"),
        (f"name={printer}&namespace=dev", 400, "namespace"),
    ):
        r = shared_platform.http.get(f"{shared_platform.url}/system/logs?{query}")
        assert r.status_code == status, (query, r.text)
        assert needle in r.text and r.text.count("\n") == 1

