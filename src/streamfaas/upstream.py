"""The upstream hop: one HTTP/1.1 exchange with a replica (from the gateway) or with a function
server (from the watchdog), on a pooled keep-alive connection.

Both hops used aiohttp's client for this. Per request it builds a ``ClientRequest``, a
``ClientResponse``, a ``ResponseHandler``, a ``StreamReader``, timers and trace hooks: about
170 µs of CPU per request on these machines, against about 40 µs for what is here (a
throw-away bench: the same server, 5,000 streams of one event at 50 at a time). While a
thousand streams open at once that is most of what a hop spends of its own (bench_burst.py).

What is here is small on purpose:

* the request head is written as text (the headers are the client's, already parsed by the
  hop's own aiohttp server, and checked again here for line breaks);
* the response is parsed by ``httptools`` (llhttp, the parser Node.js uses): status, headers,
  chunked or length-delimited or read-to-close bodies, keep-alive;
* the body is a small reader with ``readany()`` and flow control: past ``LIMIT`` buffered
  bytes the upstream connection stops being read until the copy loop catches up;
* a chunk can be handed to a ``sink`` straight from the connection's read callback while the
  copy loop waits for exactly it (``proxy_direct``), so most chunks cost no task switch.

A connection goes back to its pool only after a complete response whose request was
completely sent, and never after a HEAD (the parser cannot be told that no body follows).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import httptools
from aiohttp import ClientPayloadError, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import UpstreamError

LIMIT = 2**16  # body bytes buffered before the upstream connection is paused
_NO_BODY_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))
_BAD_IN_HEAD = ("\r", "\n", "\0")
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")  # what a method may be (RFC 9110 §5.6.2)


class UpstreamUnreachable(UpstreamError):
    """The connection could not be made: nothing was sent, so the request may go elsewhere."""


Address = tuple[str, int] | str  # (host, port), or a Unix socket's path


class Body:
    """A response body as it arrives: ``readany()`` returns what is buffered (b"" at its end)."""

    __slots__ = ("_conn", "_buffer", "_size", "_waiter", "_eof", "_exc", "_paused", "sink")

    def __init__(self, conn: _Conn) -> None:
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
                 "_delimited", "_sent", "_sender")

    def __init__(self, conn: _Conn, head_only: bool) -> None:
        self.status = 0
        self.reason: str | None = None  # None: the status's usual phrase
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        self.content = Body(conn)
        self._conn: _Conn | None = conn
        self._raw: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._complete = False
        self._keep = False
        self._head_only = head_only
        self._delimited = True  # by a length or by chunks (else by the connection's close)
        self._sent = False  # the whole request went out
        self._sender: asyncio.Task[None] | None = None

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

    def _end(self, conn: _Conn) -> None:
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()  # an upload the function no longer reads
        conn.close()

    # Called by the connection.
    def _headers_complete(self, status: int) -> None:
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


class _Conn(asyncio.Protocol):
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
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            response._fail(_broken("the function switched protocols"))
            self.close()
        except httptools.HttpParserError as exc:
            response._fail(_broken(f"malformed response ({exc.__class__.__name__})"))
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
        self.response._raw.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.response is not None
        self.response._headers_complete(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response.content._feed(body)

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


def _broken(why: str) -> ClientPayloadError:
    return ClientPayloadError(why)


class Pool:
    """Keep-alive connections to upstreams, for one replica (``unix_path``) or for TCP
    addresses taken from each request's base URL. An idle connection is closed after
    ``keepalive`` seconds; the newest idle one is used first, so the others age out."""

    def __init__(self, *, unix_path: str | None = None, keepalive: float = 30.0, connect_timeout: float = 10.0) -> None:
        self.unix_path = unix_path
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self._idle: dict[Address, list[_Conn]] = {}
        self._addresses: dict[str, tuple[Address, str, str]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def _address(self, base: str) -> tuple[Address, str, str]:
        """Where ``base`` (``http://HOST[:PORT][/PREFIX]``) is reached, its Host header, and the
        path prefix every target gets."""
        known = self._addresses.get(base)
        if known is None:
            try:
                parts = urlsplit(base)
                port = parts.port or 80
            except ValueError:
                parts, port = urlsplit(""), 0
            if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
                raise UpstreamError(f"upstream unavailable: not an http:// address: {base!r}")
            address: Address = self.unix_path if self.unix_path is not None else (parts.hostname, port)
            known = (address, parts.netloc, parts.path.rstrip("/"))
            if len(self._addresses) < 4096:
                self._addresses[base] = known
        return known

    async def request(
        self,
        method: str,
        base: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | StreamReader | None,
    ) -> Response:
        """Send ``method target`` to ``base`` and wait for the response head. Connection
        failures raise ``UpstreamUnreachable`` (nothing was sent); anything after that
        ``UpstreamError``."""
        if self._closed:
            raise UpstreamUnreachable("upstream unavailable: the replica is gone")
        address, host, prefix = self._address(base)
        head, stream = _head(method, prefix + target, host, headers, body)
        conn = self._take(address)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(address)
        try:
            response = self._send(conn, method, head, body, stream)
            try:
                await response._head
            except ClientPayloadError as exc:
                if not (reused and response.status == 0 and method in _NO_BODY_METHODS and not body):
                    raise UpstreamError(f"upstream unavailable: {exc}") from None
                # A kept-alive connection the upstream closed as this request went out: a
                # request that changes nothing goes once more, on a new connection (as Go's
                # http.Transport does); others fail, since the function may have acted on them.
                response.close()
                conn = await self._connect(address)
                response = self._send(conn, method, head, body, stream)
                try:
                    await response._head
                except ClientPayloadError as again:
                    raise UpstreamError(f"upstream unavailable: {again}") from None
            return response
        except BaseException:
            if conn.response is not None:
                conn.response.close()
            conn.close()
            raise

    def _send(self, conn: _Conn, method: str, head: bytes, body: bytes | StreamReader | None, stream: bool) -> Response:
        response = conn.response = Response(conn, head_only=method == "HEAD")
        assert conn.transport is not None
        if isinstance(body, StreamReader):
            conn.transport.write(head)
            response._sender = asyncio.get_running_loop().create_task(_send_body(conn, response, body, stream))
        else:
            conn.transport.write(head + body if body else head)
            response._sent = True
        return response

    def _take(self, address: Address) -> _Conn | None:
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self, address: Address) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout or None):
                if isinstance(address, str):
                    _, conn = await loop.create_unix_connection(lambda: _Conn(self, address), address)
                else:
                    _, conn = await loop.create_connection(lambda: _Conn(self, address), address[0], address[1])
        except (OSError, TimeoutError) as exc:
            raise UpstreamUnreachable(f"upstream unavailable: {exc.__class__.__name__}") from None
        return conn

    def _put(self, conn: _Conn) -> None:
        if self._closed:
            conn.close()
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        self._idle.setdefault(conn.address, []).append(conn)
        if self._sweeper is None and self.keepalive > 0:
            self._sweeper = loop.call_later(self.keepalive / 2, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        oldest = loop.time() - self.keepalive
        for address, idle in list(self._idle.items()):
            keep = []
            for conn in idle:
                if conn.closed:
                    continue
                if conn.idle_since <= oldest:
                    conn.close()
                else:
                    keep.append(conn)
            if keep:
                self._idle[address] = keep
            else:
                del self._idle[address]
        if self._idle:
            self._sweeper = loop.call_later(self.keepalive / 2, self._sweep)

    def idle_count(self) -> int:
        return sum(1 for idle in self._idle.values() for conn in idle if not conn.closed)

    def close(self) -> None:
        """Close the idle connections; those carrying a stream end with it."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _head(method: str, target: str, host: str, headers: CIMultiDict[str], body: bytes | StreamReader | None) -> tuple[bytes, bool]:
    """The request head, and whether a streamed body goes chunked."""
    if not _TOKEN.fullmatch(method) or any(c in target for c in (" ", *_BAD_IN_HEAD)) or not target.startswith("/"):
        raise UpstreamError("upstream unavailable: a request line that cannot be sent")
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    if "Host" not in headers:
        lines.append(f"Host: {host}\r\n")
    sized = isinstance(body, bytes) and body  # this side sets the length
    for name, value in headers.items():
        if any(c in name or c in value for c in _BAD_IN_HEAD):
            raise UpstreamError(f"upstream unavailable: header {name!r} holds a line break")
        if sized and name.lower() == "content-length":
            continue
        lines.append(f"{name}: {value}\r\n")
    stream = False
    if isinstance(body, StreamReader):
        if "Content-Length" not in headers:
            lines.append("Transfer-Encoding: chunked\r\n")
            stream = True
    elif body:
        lines.append(f"Content-Length: {len(body)}\r\n")
    elif method not in _NO_BODY_METHODS and "Content-Length" not in headers:
        lines.append("Content-Length: 0\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape"), stream


async def _send_body(conn: _Conn, response: Response, body: StreamReader, chunked: bool) -> None:
    """Copy a streamed request body upstream, as it comes, with flow control both ways."""
    assert conn.transport is not None
    transport = conn.transport
    try:
        while data := await body.readany():
            if chunked:
                transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
            else:
                transport.write(data)
            await conn.drain()
        if chunked:
            transport.write(b"0\r\n\r\n")
        response._sent = True
    except (ConnectionError, OSError, asyncio.IncompleteReadError, ClientPayloadError):
        # The caller's upload broke off, or the upstream went away: this exchange is over.
        conn.close()
    except asyncio.CancelledError:
        conn.close()
        raise
