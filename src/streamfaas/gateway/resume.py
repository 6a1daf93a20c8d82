"""The request side of resumable streams (``stream_resume: true``): start a journalled stream,
and serve a ``Last-Event-ID`` from the journal (``journal.py``), here or, with the NATS queue,
from JetStream (``journal_nats.py``).

A client learns how to resume from the response: ``X-Stream-Id`` (the stream) and each
event's ``id:``. An ``EventSource`` does the rest by itself: it reconnects to the same URL with
``Last-Event-ID``. A fetch-based client sends the same request again with ``Last-Event-ID``
(and ``X-Stream-Id`` when the function sets its own event ids). The resumed response carries
the events after that id, then the live tail; the function is not called again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from aiohttp import ClientError, web
from multidict import CIMultiDict

from .._upstream_conn import Response
from ..config import ResumeSettings, SseSettings
from ..proxy import (
    HEARTBEAT,
    StreamObserver,
    _ended_by,
    _Heartbeat,
    _IdleWatch,
    _sets_retry,
    error_event,
    prepare_unsized,
    response_headers,
    stream_failure,
)
from .journal import (
    EventIds,
    Head,
    Journal,
    JournalGone,
    Reader,
    Stream,
    is_stream_id,
    split_event_id,
)

STREAM_ID_HEADER = "X-Stream-Id"
__all__ = ["HEARTBEAT", "STREAM_ID_HEADER", "resume_or_none", "start_journalled"]


def journal_head(upstream: Response) -> Head:
    return Head(upstream.status, upstream.reason, response_headers(upstream))


def start_journalled(
    journal: Journal,
    function: str,
    upstream: Response,
    settings: ResumeSettings,
    sse: SseSettings,
    release: Callable[[], None],
) -> Stream:
    """Journal ``upstream``'s event stream from now on, in a task of its own; ``release`` is
    called when the function's side ends (the replica's request is over)."""
    stream = journal.open(function, journal_head(upstream), max_bytes=settings.max_bytes,
                          window=settings.window, grace=settings.grace)
    stream.head.headers[STREAM_ID_HEADER] = stream.sid
    retry_line = b"retry: %d\n" % sse.retry_ms if sse.retry_ms else b""
    task = asyncio.get_running_loop().create_task(_pump(stream, upstream, retry_line, release))
    journal.pumps.add(task)
    task.add_done_callback(journal.pumps.discard)
    stream.on_abandon = lambda: None if task.cancel() else None  # no client for resume_grace: stop the function
    return stream


async def _pump(stream: Stream, upstream: Response, retry_line: bytes, release: Callable[[], None]) -> None:
    """Copy the function's stream into the journal, ids added, until it ends or is abandoned."""
    ids = EventIds(stream.sid)
    mirror = stream.journal.mirror
    if mirror is not None:
        await mirror.opened(stream)
    clean = False
    outcome = "client"  # cancelled: every client went away and none came back in time
    last: bytes | None = None
    journal = stream.journal
    # A function's resume_max_bytes may lift the limit past MAX_EVENT, never past the operator's
    # --resume-journal-bytes; and all streams' unfinished events share that bound.
    event_limit = min(max(stream.max_bytes, MAX_EVENT), journal.max_bytes)
    held = 0
    try:
        read = upstream.content.readany
        chunk = await read()
        if chunk:
            out = ids.feed(chunk)
            # The hint rides on the first event, as the plain proxy sends it: no extra event.
            await _append(stream, retry_line + out if retry_line and not _sets_retry(chunk) else out)
        while chunk:
            last = chunk
            journal.partial += ids.held - held
            held = ids.held
            if held > event_limit:
                raise EventTooLong(event_limit)
            if journal.partial > journal.max_bytes:
                raise EventTooLong(held, gateway_wide=True)
            chunk = await read()
            if chunk:
                await _append(stream, ids.feed(chunk))
        await _append(stream, ids.flush())
        outcome = _ended_by(last)
        clean = True
    except (ClientError, asyncio.IncompleteReadError, EventTooLong) as exc:
        outcome = "function"
        why = str(exc) if isinstance(exc, EventTooLong) else stream_failure(exc)
        await _append(stream, ids.feed(ids.end_event() + error_event(why, 502)))
    finally:
        journal.partial -= held
        if clean:
            upstream.release()
        else:
            upstream.close()
        release()
        stream.finish(outcome)
        if mirror is not None:
            await mirror.finished(stream)


# The longest event a resumable stream passes on (or resume_max_bytes, if larger, up to the
# gateway's --resume-journal-bytes): each event is held whole until its blank line (to give it
# an id), so one that never ends would grow the gateway without end. Large enough for an image
# sent in one data: line.
MAX_EVENT = 16 << 20


class EventTooLong(Exception):
    def __init__(self, limit: int, *, gateway_wide: bool = False) -> None:
        if gateway_wide:
            super().__init__(f"the function's unfinished event ({limit} bytes) is past what the gateway holds for all resumable "
                             "streams' unfinished events (--resume-journal-bytes)")
        else:
            super().__init__(f"the function sent an event longer than {limit} bytes (a resumable stream holds each event whole)")


async def _append(stream: Stream, data: bytes) -> None:
    """Into the journal (its readers woken at once), then into JetStream's copy, if any."""
    offset = stream.end
    if stream.full(len(data)):
        await stream.room(len(data))
    await stream.deliver(data)
    mirror = stream.journal.mirror
    if mirror is not None and data:
        await mirror.appended(stream, offset, data)


async def relay(
    request: web.Request,
    stream: Stream,
    offset: int,
    *,
    extra_headers: CIMultiDict[str],
    sse: SseSettings,
    observer: StreamObserver | None,
) -> web.StreamResponse:
    """Send one client the stream from ``offset``: what the journal has, then the live tail."""
    head = stream.head
    resp = web.StreamResponse(status=head.status, reason=head.reason, headers=head.headers)
    resp.headers.update(extra_headers)
    tally = [0, 0, 0]  # bytes, events, chunks
    outcome = "client"
    beat: _Heartbeat | None = None
    progress: _IdleWatch | None = None

    def sent(chunk: bytes) -> None:
        assert progress is not None
        if not tally[2] and observer is not None:
            observer.first_byte()
        progress.chunks += 1
        progress.last = chunk
        tally[0] += len(chunk)
        tally[1] += chunk.count(b"\n\n")
        tally[2] += 1

    async def write(chunk: bytes) -> bool:
        try:
            await resp.write(chunk)
            return True
        except (ConnectionError, ClientError, RuntimeError):
            return False

    reader = Reader(offset, write, sent)
    stream.attach(reader)
    try:
        await prepare_unsized(resp, request)
        if observer is not None:
            observer.opened()
        async with asyncio.timeout(None) as cm:
            progress = _IdleWatch(0, cm)  # no limit here: a counter for the heartbeat
            if sse.heartbeat_interval:
                beat = _Heartbeat(sse.heartbeat_interval, progress, resp, request.transport)
            try:
                # What the journal has, then the tail: most of it written by the pump itself
                # while this waits (Stream.deliver); the rest read and written here.
                while chunk := await stream.read(reader):
                    await resp.write(chunk)
                    stream.advanced(reader, len(chunk))
                    sent(chunk)
            except JournalGone as gone:  # this client fell behind what the journal keeps
                await resp.write(error_event(str(gone), 410))
            finally:
                if beat is not None:
                    beat.stop()
        if reader.broken:
            return resp
        outcome = stream.outcome or "complete"
        await resp.write_eof()
        return resp
    except (ConnectionError, ClientError, RuntimeError):
        outcome = "client"
        return resp
    finally:
        stream.detach(reader)
        if observer is not None:
            observer.ended(tally[0], tally[1], outcome)


async def resume_or_none(
    journal: Journal,
    request: web.Request,
    function: str,
    last_event_id: str,
    settings: ResumeSettings,
    *,
    extra_headers: CIMultiDict[str],
    sse: SseSettings,
    observer: StreamObserver | None,
    count: Callable[[str], None],
) -> web.StreamResponse | None:
    """The resumed stream for a request with ``Last-Event-ID``; None when the function should
    be called afresh (``resume_fallback: rerun``); else a 404 that says why."""
    sid, event_id = split_event_id(last_event_id)
    given = request.headers.get(STREAM_ID_HEADER)
    if given is not None:
        sid = given if is_stream_id(given) else ""  # not one the gateway made: names no stream
    try:
        try:
            stream = journal.find(function, sid, event_id)
        except JournalGone:
            if journal.mirror is None or not sid:
                raise
            stream = await journal.mirror.adopt(function, sid, event_id)  # begun on another gateway
        else:
            if journal.mirror is not None:  # a copy another client's resume began may be behind this one's event
                await journal.mirror.caught_up(stream)
        offset = stream.offset_after(event_id)
    except JournalGone as gone:
        count("rerun" if settings.rerun else gone.reason)
        if settings.rerun:
            return None
        body = {"error": {"message": str(gone), "reason": gone.reason, "status": 404}}
        resp = web.Response(status=404, text=json.dumps(body) + "\n", content_type="application/json")
        resp.headers.update(extra_headers)
        return resp
    count("resumed")
    return await relay(request, stream, offset, extra_headers=extra_headers, sse=sse, observer=observer)

