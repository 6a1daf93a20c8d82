"""The journal's pure parts: ids given at event ends however the bytes are chunked, a function's
own ids kept, and the byte bounds (per stream, per gateway) dropping the oldest bytes first."""

from __future__ import annotations

import asyncio

import pytest
from httpx_sse._decoders import SSEDecoder
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from streamfaas.gateway.journal import (
    STREAM_OVERHEAD,
    EventIds,
    Head,
    Journal,
    JournalGone,
    Reader,
    event_end,
    split_event_id,
)

SID = "A" * 16


def _events(raw: bytes) -> list[tuple[str, str, str]]:
    decoder = SSEDecoder()
    out = []
    for line in raw.decode().splitlines():
        event = decoder.decode(line)
        if event is not None:
            out.append((event.event, event.data, event.id))
    return out


def _feed_all(chunks: list[bytes]) -> bytes:
    ids = EventIds(SID)
    return b"".join(ids.feed(chunk) for chunk in chunks) + ids.flush()


STREAM = b"data: one\n\n: comment\n\nevent: note\ndata: two\ndata: lines\n\nid: own-7\ndata: three\n\ndata: four\r\n\r\n"


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), unique=True, max_size=12))
def test_ids_do_not_depend_on_how_the_stream_is_chunked(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    assert _feed_all([STREAM[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]) == _feed_all([STREAM])


def test_each_event_gets_an_id_at_its_end_and_a_function_id_is_kept() -> None:
    out = _feed_all([STREAM])
    assert [e for e in _events(out) if e[1]] == [
        ("message", "one", f"{SID}:1"),
        ("note", "two\nlines", f"{SID}:3"),
        ("message", "three", "own-7"),
        ("message", "four", f"{SID}:5"),
    ]
    # An event's end is just past its blank line: resuming there starts the next event.
    assert out[event_end(out, f"{SID}:1"):].startswith(b": comment\n")
    assert out[event_end(out, f"{SID}:2"):].startswith(b"event: note")
    assert out[event_end(out, "own-7"):].startswith(b"data: four")
    assert event_end(out, f"{SID}:5") == len(out)
    assert event_end(out, f"{SID}:6") == -1 and event_end(out, "own") == -1


def test_bytes_after_the_last_event_end_are_passed_on_at_once() -> None:
    ids = EventIds(SID)
    assert ids.feed(b"data: par") == b"data: par"
    assert ids.feed(b"tial\n") == b"tial\n"
    assert ids.feed(b"\n") == f"id: {SID}:1\n\n".encode()


def test_split_event_id_tells_the_gateways_ids_from_a_functions() -> None:
    assert split_event_id(f"{SID}:12") == (SID, f"{SID}:12")
    assert split_event_id("own-7") == ("", "own-7")
    assert split_event_id("a:b:3") == ("", "a:b:3")


def _stream(journal: Journal, max_bytes: int = 1000):  # type: ignore[no-untyped-def]
    return journal.open("fn", Head(200, "OK", CIMultiDict()), max_bytes=max_bytes, window=60, grace=30)


async def test_a_stream_over_its_byte_limit_drops_its_oldest_events() -> None:
    journal = Journal(10_000)
    stream = _stream(journal, max_bytes=100)  # the last 3 events (≈ 32 bytes each)
    ids = EventIds(stream.sid)
    for n in range(10):
        stream.append(ids.feed(b"data: %d\n\n" % n))
    assert stream.end - stream.base <= 100 and journal.size == stream.end - stream.base + stream.overhead
    with pytest.raises(JournalGone) as gone:
        stream.offset_after(f"{stream.sid}:1")
    assert gone.value.reason == "dropped"
    offset = stream.offset_after(f"{stream.sid}:9")
    assert (await stream.read(Reader(offset))).startswith(b"data: 9\n")
    stream.finish("complete")
    await journal.close()


async def test_the_gateway_limit_takes_bytes_from_the_oldest_stream_first() -> None:
    overhead = STREAM_OVERHEAD + len("OK")  # each stream's head and objects count too
    journal = Journal(100 + 2 * overhead)
    old, new = _stream(journal), _stream(journal)
    old.append(b"x" * 80)
    new.append(b"y" * 60)
    assert journal.size <= 100 + 2 * overhead
    assert old.end - old.base < 80 and new.end - new.base == 60
    await journal.close()
    assert journal.size == 0


async def test_a_slow_reader_holds_the_writer_back_instead_of_losing_bytes() -> None:
    journal = Journal(10_000)
    stream = _stream(journal, max_bytes=100)
    reader = Reader(0)
    stream.attach(reader)
    stream.append(b"x" * 80)
    await asyncio.wait_for(stream.room(20), 1)  # 100 bytes in all: still within the journal
    waiting = asyncio.ensure_future(stream.room(30))  # would drop 10 unread bytes
    await asyncio.sleep(0)
    assert not waiting.done()
    stream.advanced(reader, 40)
    await asyncio.wait_for(waiting, 1)
    # One chunk bigger than the whole journal is kept until read, then trimmed with the next.
    stream.append(b"y" * 30)
    stream.append(b"z" * 500)
    assert stream.base == 40
    stream.advanced(reader, stream.end - reader.offset)
    stream.append(b".")
    assert stream.end - stream.base <= 100
    stream.detach(reader)
    await journal.close()


async def test_a_last_chunk_over_the_limit_is_trimmed_once_read_or_its_reader_gone() -> None:
    """No chunk comes after it to trim with: the read (or the client leaving) trims."""
    journal = Journal(10_000)
    for leave in (False, True):
        stream = _stream(journal, max_bytes=100)
        reader = Reader(0)
        stream.attach(reader)
        stream.append(b"x" * 400)  # the function's whole answer in one read, the client behind
        stream.finish("complete")
        assert stream.end - stream.base == 400  # unread: kept whole
        if leave:
            stream.detach(reader)
        else:
            stream.advanced(reader, 400)
        assert stream.end - stream.base <= 100 and stream.base == 300
    assert journal.size == 200 + 2 * (STREAM_OVERHEAD + len("OK"))  # the gateway's count follows: two streams of 100 kept
    await journal.close()


async def test_streams_of_no_bytes_count_too_and_the_oldest_finished_ones_go() -> None:
    # Each call to a resumable function left a stream (its head, its objects) for resume_window,
    # outside the journal's bound: 60 KiB of headers a call grew the gateway by 3 GiB an hour.
    overhead = STREAM_OVERHEAD + len("OK") + len("X-Big") + 60_000
    journal = Journal(10 * overhead)
    streams = []
    for _ in range(25):
        stream = journal.open("fn", Head(200, "OK", CIMultiDict({"X-Big": "h" * 60_000})), max_bytes=1000, window=60, grace=30)
        stream.finish("complete")
        streams.append(stream)
        assert journal.size <= 10 * overhead
    assert len(journal.streams) == 10 and streams[-1].sid in journal.streams and streams[0].sid not in journal.streams
    await journal.close()
    assert journal.size == 0


async def test_a_waiting_client_gets_each_chunk_from_the_writer_and_a_lagging_one_reads_it() -> None:
    journal = Journal(10_000)
    stream = _stream(journal)
    got: list[bytes] = []

    async def write(chunk: bytes) -> bool:
        got.append(chunk)
        return True

    live, behind = Reader(0, write), Reader(0)
    stream.attach(live)
    stream.attach(behind)
    reading = [asyncio.ensure_future(stream.read(r)) for r in (live, behind)]
    await asyncio.sleep(0)  # both wait for the first byte
    await stream.deliver(b"data: 1\n\n")
    assert got == [b"data: 1\n\n"] and live.offset == stream.end  # written by the writer itself
    assert await reading[1] == b"data: 1\n\n" and behind.offset == 0  # this one reads it
    stream.finish("complete")
    assert await reading[0] == b""
    await journal.close()


async def test_a_stream_with_no_reader_is_abandoned_after_its_grace() -> None:
    journal = Journal(1000)
    stream = journal.open("fn", Head(200, "OK", CIMultiDict()), max_bytes=100, window=60, grace=0.05)
    abandoned = asyncio.Event()
    stream.on_abandon = abandoned.set
    reader = Reader(0)
    stream.attach(reader)
    stream.detach(reader)
    await asyncio.wait_for(abandoned.wait(), 5)
    await journal.close()


async def test_a_stream_is_never_adopted_twice() -> None:
    # Two resumes of another gateway's stream at once: a second copy replaced the first under
    # its reader, and neither's bytes were given back. JetStreamJournal.adopt reuses the copy.
    journal = Journal(10 << 20)
    head = Head(200, "OK", CIMultiDict())
    first = journal.adopt("fn", SID, head, max_bytes=1000, window=60, grace=30)
    first.append(b"x" * 100)
    with pytest.raises(ValueError, match="kept here already"):
        journal.adopt("fn", SID, head, max_bytes=1000, window=60, grace=30)
    assert journal.streams[SID] is first and journal.size == first.overhead + 100
    first.finish("complete")
    await journal.close()
    assert journal.size == 0


def test_the_error_event_after_a_lone_cr_ends_that_event_first() -> None:
    from streamfaas.proxy import end_of_event

    assert end_of_event(b"data: x\r") == b"\n\n"  # the LF pairs with the CR: one more ends the event
    assert end_of_event(b"data: x\n") == b"\n"
    assert end_of_event(b"data: x") == b"\n\n"
    assert end_of_event(b"data: x\n\n") == end_of_event(b"data: x\r\n\r\n") == end_of_event(None) == b""
