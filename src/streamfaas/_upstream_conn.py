"""One upstream connection (``upstream.Pool``'s): the asyncio protocol that parses responses
with ``httptools`` (llhttp), the ``Response`` it carries, and that response's ``Body`` reader.

The body reader has ``readany()`` and flow control: past ``LIMIT`` buffered bytes the
connection stops being read until the copy loop catches up. A chunk can also go to the body's
``sink`` straight from the read callback while the copy loop waits for exactly it
(``proxy_direct``), so most chunks cost no task switch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools
from aiohttp import ClientPayloadError
from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from .upstream import Pool

LIMIT = 2**16  # body bytes buffered before the upstream connection is paused
# A response head (status line and headers, interim ones included) from a function, which is
# untrusted code: llhttp bounds neither a header's size nor their number, so an endless header
# would grow without end in the watchdog and then in the gateway. Go's of-watchdog and nginx
# stop far lower than this too.
MAX_HEAD = 64 * 1024
CHUNK_FRAMING = 64  # a chunk's size line and CRLFs, with room for a short extension
MAX_HEADERS = 256

Address = tuple[str, int] | str  # (host, port), or a Unix socket's path


class Body:
    """A response body as it arrives: ``readany()`` returns what is buffered (b"" at its end)."""

    __slots__ = ("_conn", "_buffer", "_size", "_waiter", "_eof", "_exc", "_paused", "sink")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._buffer: list[bytes] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._exc: BaseException | None = None
        self._paused = False
        # Called with a chunk while readany() waits and nothing is buffered; returns whether
        # it took the chunk (proxy_direct.Direct.take).
        self.sink: Callable[[bytes], bool] | None = None

    def _feed(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None and self._waiter is not None and not self._buffer and sink(data):
            return
        self._buffer.append(data)
        self._size += len(data)
        self._wake()
        if self._size > LIMIT and not self._paused:
            self._paused = True
            self._conn.pause()

    def _end(self, exc: BaseException | None = None) -> None:
        if self._eof:
            return
        self._eof = True
        self._exc = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def at_hand(self) -> bool:
        """Whether ``readany()`` would return at once, with data or at a clean end."""
        return bool(self._buffer) or (self._eof and self._exc is None)

    async def readany(self) -> bytes:
        while not self._buffer:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        buffer = self._buffer
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        self._size = 0
        if self._paused:
            self._paused = False
            self._conn.resume()
        return data

    async def read(self) -> bytes:
        """The whole rest of the body."""
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)


class Response:
    """The response head, and its ``content``. End it with ``release()`` (read to its end: the
    connection may be reused) or ``close()`` (anything else: the connection is closed)."""

    __slots__ = ("status", "reason", "headers", "content", "_conn", "_raw", "_head", "_complete", "_keep", "_head_only",
                 "_delimited", "_sent", "_sender", "_head_left", "_stalled", "_body_fed", "_framing_left")

    def __init__(self, conn: Connection, head_only: bool) -> None:
        self.status = 0
        self.reason: str | None = None  # None: the status's usual phrase
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        self.content = Body(conn)
        self._conn: Connection | None = conn
        self._raw: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._complete = False
        self._keep = False
        self._head_only = head_only
        self._delimited = True  # by a length or by chunks (else by the connection's close)
        self._sent = False  # the whole request went out
        self._stalled = False  # its streamed body sent nothing for the body's idle limit
        self._sender: asyncio.Task[None] | None = None
        self._head_left = MAX_HEAD  # bytes the head may still take
        self._body_fed = 0
        self._framing_left = MAX_HEAD  # bytes after the head that are not body (chunk framing, trailers)

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    def forget_headers(self) -> None:
        """Drop the parsed headers once used: a stream may live for hours (≈ 0.9 KiB a stream)."""
        self.headers = _NO_HEADERS

    def release(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if self._complete and self._keep and self._sent and not conn.closed:
            conn.response = None
            conn.pool._put(conn)
        else:
            self._end(conn)

    def close(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            self._end(conn)

    def _end(self, conn: Connection) -> None:
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()  # an upload the function no longer reads
        conn.close()

    # Called by the connection.
    def _headers_complete(self, status: int) -> None:
        if not 100 <= status <= 999:
            raise _Refused(f"status {status:03d} is not an HTTP status")
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self._raw.clear()
            return
        self.status = status
        self.headers = headers = CIMultiDictProxy(CIMultiDict([
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for name, value in self._raw
        ]))
        self._raw = []
        self._delimited = "Content-Length" in headers or "chunked" in headers.get("Transfer-Encoding", "").lower()
        if not self._head.done():
            self._head.set_result(None)
        if self._head_only:  # no body follows, whatever Content-Length says; not reused
            self._complete = True
            self.content._end()

    def _message_complete(self, keep: bool) -> bool:
        """Whether this was the response (not an interim one)."""
        if self.status == 0:
            return False
        self._complete = True
        self._keep = keep
        self.content._end()
        return True

    def _fail(self, exc: BaseException) -> None:
        if not self._head.done():
            self._head.set_exception(exc)
        self.content._end(exc)


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class Connection(asyncio.Protocol):
    """One connection; ``response`` is the exchange it carries (None while idle)."""

    def __init__(self, pool: Pool, address: Address) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.closed = False
        self.idle_since = 0.0
        self.parser = httptools.HttpResponseParser(self)
        self._drain: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._reading_paused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not registered as one

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for, on an idle connection
            self.close()
            return
        try:
            if not response.status:  # the head is still coming: MAX_HEAD bytes in all
                if len(data) > response._head_left:
                    head, data = data[: response._head_left], data[response._head_left :]
                    self.parser.feed_data(head)
                    if not response.status:
                        raise _Refused(f"a response head larger than {MAX_HEAD // 1024} KiB")
                    if self.response is None:  # a whole response in the head's share: the rest is unasked for
                        if data:
                            self.close()
                        return
                else:
                    response._head_left -= len(data)
                self.parser.feed_data(data)
            else:
                # After the head, what is not body (chunk sizes, trailers, which httptools
                # gathers whole before a callback) shares a budget: MAX_HEAD, and a little
                # more for each chunk. Before, an endless trailer grew the watchdog without end.
                body = response._body_fed
                self.parser.feed_data(data)
                response._framing_left -= len(data) - (response._body_fed - body)
                if response._framing_left < 0:
                    raise _Refused(f"response framing or trailers larger than {MAX_HEAD // 1024} KiB")
        except _Refused as exc:
            response._fail(_broken(f"refused {exc}"))
            self.close()
        except httptools.HttpParserUpgrade:
            response._fail(_broken("the function switched protocols"))
            self.close()
        except httptools.HttpParserError as exc:
            cause = exc.__cause__ or exc.__context__
            why = f"refused {cause}" if isinstance(cause, _Refused) else f"malformed response ({exc.__class__.__name__})"
            response._fail(_broken(why))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        response = self.response
        if response is None or response._complete:
            return
        if response.status and not response._delimited:
            # Neither a length nor chunks: the body ends where the connection does.
            response._message_complete(False)
            return
        response._fail(_broken("the connection closed before the response ended"))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    async def drain(self) -> None:
        if self._writing_paused and not self.closed:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await self._drain
            finally:
                self._drain = None
        if self.closed:
            raise ConnectionResetError("the connection to the function closed")

    # httptools callbacks
    def on_status(self, reason: bytes) -> None:
        assert self.response is not None
        self.response.reason = reason.decode("latin-1") or None

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        raw = self.response._raw
        if len(raw) >= MAX_HEADERS:
            raise _Refused(f"a response with more than {MAX_HEADERS} headers")
        raw.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.response is not None
        self.response._headers_complete(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        response = self.response
        assert response is not None
        response._body_fed += len(body)
        response.content._feed(body)

    def on_chunk_header(self) -> None:
        if self.response is not None:
            self.response._framing_left += CHUNK_FRAMING

    def on_message_complete(self) -> None:
        response = self.response
        assert response is not None
        if response._message_complete(self.parser.should_keep_alive()):
            self.response = None  # any further byte is unsolicited

    # flow control of the response body
    def pause(self) -> None:
        if self.transport is not None and not self._reading_paused and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and self._reading_paused and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Refused(Exception):
    """A response head the platform does not take from a function."""


def _broken(why: str) -> ClientPayloadError:
    return ClientPayloadError(why)
