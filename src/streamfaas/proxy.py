"""The streaming proxy shared by the gateway and the watchdog.

Every chunk read from upstream is written to the client as soon as it arrives; nothing is
buffered. A failure after the headers went out is made visible: an ``event: error`` for event
streams, an aborted chunked body otherwise, never a silent truncated success.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import (
    BaseConnector,
    ClientError,
    ClientOSError,
    ClientPayloadError,
    ClientSession,
    DummyCookieJar,
    HttpVersion11,
    ServerDisconnectedError,
    StreamReader,
    hdrs,
    web,
)
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict, CIMultiDictProxy

from . import proxy_direct
from ._upstream_conn import Response
from .config import SseSettings
from .errors import PayloadTooLarge, RequestTimeout, StreamfaasError, UpstreamError, UpstreamTimeout
from .upstream import Pool

# RFC 9110 §7.6.1 connection-specific headers, plus the ones aiohttp sets itself per hop.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
        "Host",
    )
)

EVENT_STREAM = "text/event-stream"
_UNTIMED: contextlib.nullcontext[None] = contextlib.nullcontext()


class StreamTimeout(StreamfaasError):
    """The stream was stopped by the idle or the total limit."""

    http_status = 504


def client_session(connector: BaseConnector) -> ClientSession:
    """A session for proxying: no decompression, no cookies, and the client's headers passed
    as they are (no Accept-Encoding, User-Agent, Content-Type or Accept added)."""
    return ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=DummyCookieJar(),
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type", "Accept"),
    )


def forward_headers(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], drop: Iterable[str] = ()
) -> CIMultiDict[str]:
    """Copy request or response headers, minus hop-by-hop ones and those named in Connection."""
    named = {t.strip() for t in headers.get(hdrs.CONNECTION, "").split(",") if t.strip()}
    out = CIMultiDict(headers)  # copied in C; then the few names to drop, case-insensitively
    for name in (*HOP_BY_HOP, *named, *drop):
        if name in out:
            del out[name]  # every value of that name
    return out


def is_event_stream(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower() == EVENT_STREAM  # type: ignore[union-attr]


def error_event(message: str, status: int) -> bytes:
    """The final SSE event sent when a stream fails after its headers went out."""
    payload = json.dumps({"error": {"message": message, "status": status}})
    return f"event: error\ndata: {payload}\n\n".encode()


def error_response(message: str, status: int) -> web.Response:
    """A one-line error for a failure before any header went out."""
    return web.Response(status=status, text=message.rstrip("\n") + "\n")


@dataclass(frozen=True)
class StreamLimits:
    """Time limits of one proxied exchange; 0 disables a limit."""

    headers: float = 0.0  # until the upstream's response headers arrive
    idle: float = 0.0  # the longest gap without a chunk, once streaming
    total: float = 0.0  # the whole exchange (what is left of it)
    total_setting: float = 0.0  # the configured total, for the error message


class _IdleWatch:
    """Fires the surrounding ``asyncio.timeout`` when no chunk has moved for ``limit`` seconds.

    The hot loop only bumps a counter; the check runs on a timer every ``limit`` seconds, so a
    stall is caught between one and two limits after the last chunk, at no per-chunk cost.
    """

    __slots__ = ("limit", "chunks", "last", "_seen", "_handle", "_cm", "fired")

    def __init__(self, limit: float, cm: asyncio.Timeout | None) -> None:
        self.limit = limit
        self.chunks = 0
        self.last: bytes | None = None  # the latest chunk, for _Heartbeat's boundary check
        self._seen = -1
        self._cm = cm
        self.fired = False
        self._handle: asyncio.TimerHandle | None = None
        if limit > 0:
            self._handle = asyncio.get_running_loop().call_later(limit, self._check)

    def _check(self) -> None:
        if self.chunks == self._seen:
            self.fired = True
            assert self._cm is not None  # a limit always comes with its timeout
            self._cm.reschedule(asyncio.get_running_loop().time())
            return
        self._seen = self.chunks
        self._handle = asyncio.get_running_loop().call_later(self.limit, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


# A comment line with no blank line after it: a blank line would end an "event" with no data,
# which the spec drops but some parsers (httpx-sse, once an id was seen) pass on as an empty event.
HEARTBEAT = b": ping\n"
# How data that ends at an event boundary ends: a line's end, then an empty line (CR, LF or
# CRLF each). A boundary split across two chunks ("…\n" then "\n") is not seen, so that stream
# gets no heartbeat until its next chunk: never a ping inside an event.
_BOUNDARY_ENDS = (b"\n\n", b"\r\r", b"\n\r\n", b"\r\r\n")


class _Heartbeat:
    """Writes an SSE comment after ``interval`` of silence, only at an event boundary.

    Like ``_IdleWatch``, it costs nothing per chunk: a clock shared by every stream with the
    same interval ticks every half interval and compares each stream's chunk counter, so a ping
    goes out between one and one and a half intervals into a silence, then every interval. It
    never touches the counter, so ``idle_timeout`` still sees the function's own silence.
    """

    __slots__ = ("_clock", "_progress", "_resp", "_transport", "_seen", "_quiet", "_sending")

    def __init__(self, interval: float, progress: _IdleWatch, resp: web.StreamResponse,
                 transport: asyncio.BaseTransport | None) -> None:
        self._progress = progress
        self._resp = resp
        self._transport = transport
        self._seen = 0
        self._quiet = -1  # the clock's first tick may come at once: wait one more for a whole interval
        self._sending = False
        self._clock = _HeartbeatClock.of(interval)
        self._clock.add(self)

    def due(self) -> bool:
        """Called by the clock each half interval: whether a ping should go out now."""
        chunks = self._progress.chunks
        if chunks != self._seen:
            self._seen = chunks
            self._quiet = 0
            return False
        self._quiet += 1
        last = self._progress.last
        if self._quiet >= 2 and not self._sending and (last is None or last.endswith(_BOUNDARY_ENDS)) and self._idle_line():
            self._quiet = 0
            self._sending = True
            return True
        return False

    def _idle_line(self) -> bool:
        """Nothing waits to go out to the client: then the ping cannot wait on it either (the
        clock writes every due ping in turn), and a client not keeping up needs none."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        return not isinstance(transport, asyncio.WriteTransport) or transport.get_write_buffer_size() == 0

    async def send(self) -> None:
        # A chunk may have gone out between the tick and now, leaving the stream mid-event;
        # from this check to the bytes reaching the transport nothing awaits.
        try:
            if self._progress.chunks == self._seen:
                await self._resp.write(HEARTBEAT)
        except (ConnectionError, ClientError, RuntimeError):
            # The client is gone: the handler's cancellation ends the stream; stop beating.
            self.stop()
        finally:
            self._sending = False

    def stop(self) -> None:
        self._clock.discard(self)


class _HeartbeatClock:
    """One timer for every stream of an event loop that has the same heartbeat interval: at
    5,000 streams that is one timer, not 5,000 re-armed ones, and one task per tick to write
    the pings that are due."""

    _clocks: dict[tuple[int, float], _HeartbeatClock] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self._loop = loop
        self._key = (id(loop), interval)
        self._period = interval / 2
        self._beats: set[_Heartbeat] = set()  # each stream's copy loop removes its own, in a finally
        self._handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def of(cls, interval: float) -> _HeartbeatClock:
        loop = asyncio.get_running_loop()
        clock = cls._clocks.get((id(loop), interval))
        if clock is None or clock._loop is not loop:
            clock = cls._clocks[(id(loop), interval)] = cls(loop, interval)
        return clock

    def add(self, beat: _Heartbeat) -> None:
        self._beats.add(beat)
        if self._handle is None:
            self._handle = self._loop.call_later(self._period, self._tick)

    def discard(self, beat: _Heartbeat) -> None:
        self._beats.discard(beat)

    def _tick(self) -> None:
        if not self._beats:  # no stream left: the clock goes (a new stream makes a new one)
            self._handle = None
            if self._clocks.get(self._key) is self:
                del self._clocks[self._key]
            return
        due = [beat for beat in self._beats if beat.due()]
        if due:
            task = self._loop.create_task(self._send(due))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._handle = self._loop.call_later(self._period, self._tick)

    @staticmethod
    async def _send(due: list[_Heartbeat]) -> None:
        for beat in due:
            await beat.send()


async def read_capped(request: web.Request, limit: int, too_large: str, *, read_timeout: float = 0.0,
                      too_slow: str = "") -> bytes:
    """A request's body read whole, as it comes; ``PayloadTooLarge(too_large)`` once it is past
    ``limit`` bytes, by its Content-Length before any of it is read or as it arrives (0: no limit);
    ``RequestTimeout(too_slow)`` if it is not all in within ``read_timeout`` seconds (0: no limit):
    a body that trickles in must not hold its bytes in memory for as long as its sender likes."""
    if limit and (request.content_length or 0) > limit:
        raise PayloadTooLarge(too_large)
    body = bytearray()
    try:
        async with asyncio.timeout(read_timeout or None):
            async for chunk in request.content.iter_any():
                body += chunk
                if limit and len(body) > limit:
                    raise PayloadTooLarge(too_large)
    except TimeoutError:
        raise RequestTimeout(too_slow) from None
    return bytes(body)


async def open_upstream(
    pool: Pool,
    method: str,
    base: str,
    target: str,
    *,
    headers: CIMultiDict[str],
    body: bytes | StreamReader | None,
    timeout: float,
    body_idle: float = 0.0,
) -> Response:
    """Send the request and wait for the response headers; map failures to 502/504 (408: a
    streamed body that sent nothing for ``body_idle`` seconds)."""
    try:
        async with asyncio.timeout(timeout or None):
            return await pool.request(method, base, target, headers, body, body_idle)
    except TimeoutError:
        raise UpstreamTimeout(f"upstream did not answer within {timeout:g}s") from None


def stream_failure(exc: BaseException) -> str:
    """Why a stream broke after its headers went out, in words a caller can act on. (The
    upstream is a function's server, or, seen from the gateway, its replica.)"""
    if isinstance(exc, ClientPayloadError | ServerDisconnectedError | asyncio.IncompleteReadError):
        return "the function closed the stream before finishing"
    if isinstance(exc, ClientOSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "the connection to the function was reset before the stream finished"
    return f"the stream from the function broke before finishing ({exc.__class__.__name__})"


def response_headers(upstream: Response) -> CIMultiDict[str]:
    headers = forward_headers(upstream.headers)
    if is_event_stream(upstream.headers.get(hdrs.CONTENT_TYPE)):
        # A proxy in front (nginx and friends) must not hold events back.
        headers[hdrs.CACHE_CONTROL] = "no-cache"
        headers["X-Accel-Buffering"] = "no"
    return headers


class StreamObserver(Protocol):
    """Told how one proxied stream goes, for metrics. Called a few times a stream, never per chunk."""

    def opened(self) -> None: ...

    def first_byte(self) -> None: ...

    def ended(self, nbytes: int, events: int, outcome: str) -> None:
        """``outcome``: ``complete``, or who ended it early: ``client``, ``function``, ``timeout``."""


async def prepare_unsized(resp: web.StreamResponse, request: web.Request) -> AbstractStreamWriter | None:
    """``resp.prepare``, closing the connection after a body of no known length sent to an
    HTTP/1.0 client, which only the close can end. aiohttp (3.14) sends such a body unframed
    and then keeps a keep-alive HTTP/1.0 connection open: the client waited for the end, and a
    second request's response came inside the first one's body."""
    if request.version < HttpVersion11 and resp.content_length is None:
        resp.force_close()
    return await resp.prepare(request)


async def stream_response(
    request: web.Request,
    upstream: Response,
    *,
    limits: StreamLimits,
    extra_headers: CIMultiDict[str] | None = None,
    on_chunk_error: Callable[[BaseException], None] | None = None,
    sse_settings: SseSettings | None = None,
    observer: StreamObserver | None = None,
) -> web.StreamResponse:
    """Send upstream's status and headers, then copy its body chunk by chunk until it ends.

    ``upstream`` is always closed (not returned to the pool) if the copy does not end cleanly,
    so a client that goes away closes the connection to the next hop at once. ``sse_settings``
    (the gateway's) adds heartbeats and a ``retry:`` hint to event streams.
    """
    headers = response_headers(upstream)
    if extra_headers:
        headers.update(extra_headers)
    resp = _HeadWithFirstChunk(status=upstream.status, reason=upstream.reason, headers=headers)
    del headers  # copied into resp; a stream may live for hours, so hold no extra copy
    sse = is_event_stream(upstream.headers.get(hdrs.CONTENT_TYPE))
    hints = sse_settings if sse else None
    length = upstream.content_length
    # An event stream the gateway adds to (the retry hint, heartbeats) goes chunked: its
    # function's length would cut the last bytes off.
    if length is not None and upstream.headers.get(hdrs.TRANSFER_ENCODING) is None and hints is None:
        resp.content_length = length
    upstream.forget_headers()
    retry_line = b"retry: %d\n" % hints.retry_ms if hints is not None and hints.retry_ms else b""
    count_events = sse and observer is not None
    clean = False
    outcome = "client"  # a cancellation (the client went away) unless shown otherwise
    nbytes = events = 0
    beat: _Heartbeat | None = None
    idle: _IdleWatch | None = None
    direct: proxy_direct.Direct | None = None
    try:
        writer = await prepare_unsized(resp, request)
        if writer is not None and not upstream.content.at_hand():
            writer.send_headers()  # nothing to send them with: the client gets them now
        if observer is not None:
            observer.opened()
        try:
            # No limit at all (the gateway's streams): no Timeout object held for the stream's life.
            timer = asyncio.timeout(limits.total or None) if limits.total or limits.idle else _UNTIMED
            async with timer as cm:
                idle = _IdleWatch(limits.idle, cm)
                if hints is not None and hints.heartbeat_interval:
                    beat = _Heartbeat(hints.heartbeat_interval, idle, resp, request.transport)
                try:
                    read = upstream.content.readany
                    write = resp.write
                    chunk = out = await read()
                    if chunk:
                        if observer is not None:
                            observer.first_byte()
                        # Only the first chunk is looked at for the function's own retry: a
                        # function that sets one does so at its stream's start. The hint rides
                        # on the first event (no blank line of its own), so no parser sees an
                        # extra event, and no heartbeat can come between the two.
                        if retry_line and not _sets_retry(chunk):
                            out = retry_line + chunk
                    while chunk:
                        await write(out)
                        idle.chunks += 1
                        idle.last = chunk
                        nbytes += len(chunk)
                        if count_events:
                            events += chunk.count(b"\n\n")
                        if idle.chunks == 1:  # once, from the second chunk on (the headers went out)
                            direct = proxy_direct.attach(upstream.content, request, resp, idle, count_events)
                        chunk = out = await read()
                finally:
                    idle.stop()
                    if beat is not None:
                        beat.stop()
                    if direct is not None:
                        proxy_direct.detach(upstream.content)
                        nbytes += direct.nbytes
                        events += direct.events
        except TimeoutError:
            outcome = "timeout"
            which = "idle" if idle is not None and idle.fired else "total"
            total = limits.total_setting or limits.total
            failure: StreamfaasError = StreamTimeout(
                f"stream stopped: no data for {limits.idle:g}s"
                if which == "idle"
                else f"stream stopped: exceeded the {total:g}s limit"
            )
            await _fail_after_headers(request, resp, sse, failure, on_chunk_error, idle.last if idle is not None else None)
            return resp
        except (ClientError, asyncio.IncompleteReadError) as exc:
            # aiohttp's error for writing to a closed client connection is a ClientError too.
            transport = request.transport
            outcome = "client" if transport is None or transport.is_closing() else "function"
            failure = UpstreamError(stream_failure(exc))
            await _fail_after_headers(request, resp, sse, failure, on_chunk_error, idle.last if idle is not None else None)
            return resp
        outcome = _ended_by(idle.last) if sse else "complete"
        await resp.write_eof()
        clean = True
        return resp
    finally:
        if clean:
            upstream.release()
        else:
            upstream.close()
        if observer is not None:
            observer.ended(nbytes, events, outcome)


class _HeadWithFirstChunk(web.StreamResponse):
    """A response whose status line and headers wait in aiohttp's writer for the first body
    write (or the end), so that both go out in one write: one packet, one wake-up of the next
    hop, one read for the client. ``stream_response`` sends them alone, at once, when upstream
    has no chunk at hand; from ``prepare`` to that first write nothing awaits."""

    _send_headers_immediately = False  # aiohttp's own switch (web.Response sets it so too)


def _sets_retry(chunk: bytes) -> bool:
    return chunk.startswith(b"retry:") or b"\nretry:" in chunk or b"\rretry:" in chunk


def _ended_by(last: bytes | None) -> str:
    """How an event stream that ended cleanly here ended: a watchdog upstream reports its own
    limits and failures as a final ``event: error`` (504 for a timeout); looked at once, at the end."""
    if last is None or b"event: error\n" not in last:
        return "complete"
    return "timeout" if b'"status": 504}' in last else "function"


def end_of_event(last: bytes | None) -> bytes:
    """What ends the event the stream's ``last`` chunk left unfinished (nothing if it ended
    one), so an error event written next is an event of its own, not lines of the function's.
    A chunk that is only the second half of a blank line gets one more: an empty line is no event."""
    if not last or last.endswith((b"\n\n", b"\r\n\r\n", b"\r\r")):
        return b""
    # After a lone CR the next LF would pair with it (one CRLF line end): two are needed.
    return b"\n" if last.endswith(b"\n") else b"\n\n"


async def _fail_after_headers(
    request: web.Request,
    resp: web.StreamResponse,
    sse: bool,
    failure: StreamfaasError,
    on_error: Callable[[BaseException], None] | None,
    last: bytes | None = None,
) -> None:
    """``last``: the last chunk of the function's that went out (an event it may not have ended)."""
    if on_error is not None:
        on_error(failure)
    if sse:
        try:
            await resp.write(end_of_event(last) + error_event(str(failure), failure.http_status))
            await resp.write_eof()
            return
        except (ConnectionError, RuntimeError):
            pass
    # Not an event stream: cut the chunked body so the client sees an incomplete response.
    # aiohttp's own write_eof then fails quietly on the closed transport.
    transport = request.transport
    if transport is not None:
        transport.abort()
