from __future__ import annotations

from multidict import CIMultiDict

from streamfaas.proxy import error_event, forward_headers, is_event_stream


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    headers = CIMultiDict(
        [("Connection", "keep-alive, X-Secret-Hop"), ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"),
         ("X-Secret-Hop", "1"), ("Upgrade", "h2c"), ("TE", "trailers"), ("Host", "a"), ("Content-Type", "text/plain"),
         ("X-Custom", "v"), ("X-Custom", "w")]
    )
    out = forward_headers(headers)
    assert list(out.items()) == [("Content-Type", "text/plain"), ("X-Custom", "v"), ("X-Custom", "w")]


def test_event_stream_detection() -> None:
    assert is_event_stream("text/event-stream")
    assert is_event_stream("Text/Event-Stream; charset=utf-8")
    assert not is_event_stream("text/plain")
    assert not is_event_stream(None)


def test_error_event_is_one_sse_event_with_json() -> None:
    event = error_event('upstream "x" failed', 502).decode()
    assert event.startswith("event: error\ndata: {")
    assert event.endswith("}\n\n")
    assert event.count("\n") == 3
