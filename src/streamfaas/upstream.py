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
* the body is a small reader with ``readany()`` and flow control, and a chunk can be handed
  straight from the connection's read callback to the client (``proxy_direct``): the
  connection, its response and that response's body are in ``_upstream_conn``.

A connection goes back to its pool only after a complete response whose request was
completely sent, and never after a HEAD (the parser cannot be told that no body follows).
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit

from aiohttp import ClientPayloadError, StreamReader
from multidict import CIMultiDict

from ._upstream_conn import Address, Connection, Response
from .errors import RequestTimeout, UpstreamError

_NO_BODY_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))
_BAD_IN_HEAD = ("\r", "\n", "\0")
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")  # what a method may be (RFC 9110 §5.6.2)


class UpstreamUnreachable(UpstreamError):
    """The connection could not be made: nothing was sent, so the request may go elsewhere."""


def body_stalled(idle: float) -> str:
    """Why a streamed request body was given up on (408, or the stream's end once answered)."""
    return f"request body stalled: nothing of it for {idle:g}s (read_timeout)"


async def next_piece(body: StreamReader, idle: float) -> bytes | None:
    """A streamed request body's next piece (b"" at its end), or None if nothing of it came for
    ``idle`` seconds (0: no limit): a caller that withholds its body must not hold what serves it
    (a waitress thread, a per-request process) for as long as it likes."""
    if not idle:
        return await body.readany()
    try:
        async with asyncio.timeout(idle):
            return await body.readany()
    except TimeoutError:
        return None


class Pool:
    """Keep-alive connections to upstreams, for one replica (``unix_path``) or for TCP
    addresses taken from each request's base URL. An idle connection is closed after
    ``keepalive`` seconds; the newest idle one is used first, so the others age out."""

    def __init__(self, *, unix_path: str | None = None, keepalive: float = 30.0, connect_timeout: float = 10.0) -> None:
        self.unix_path = unix_path
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self._idle: dict[Address, list[Connection]] = {}
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
        body_idle: float = 0.0,
    ) -> Response:
        """Send ``method target`` to ``base`` and wait for the response head. Connection
        failures raise ``UpstreamUnreachable`` (nothing was sent); anything after that
        ``UpstreamError``. ``body_idle``: a streamed body that sends nothing for this long is
        given up on (the exchange is cut; ``RequestTimeout`` if no head had come)."""
        if self._closed:
            raise UpstreamUnreachable("upstream unavailable: the replica is gone")
        address, host, prefix = self._address(base)
        head, stream = _head(method, prefix + target, host, headers, body)
        conn = self._take(address)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(address)
        try:
            response = self._send(conn, method, head, body, stream, body_idle)
            try:
                await response._head
            except ClientPayloadError as exc:
                if response._stalled:
                    raise RequestTimeout(body_stalled(body_idle)) from None
                if not (reused and response.status == 0 and method in _NO_BODY_METHODS and not body):
                    raise UpstreamError(f"upstream unavailable: {exc}") from None
                # A kept-alive connection the upstream closed as this request went out: a
                # request that changes nothing goes once more, on a new connection (as Go's
                # http.Transport does); others fail, since the function may have acted on them.
                response.close()
                conn = await self._connect(address)
                response = self._send(conn, method, head, body, stream, body_idle)
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

    def _send(self, conn: Connection, method: str, head: bytes, body: bytes | StreamReader | None, stream: bool,
              body_idle: float = 0.0) -> Response:
        response = conn.response = Response(conn, head_only=method == "HEAD")
        assert conn.transport is not None
        if isinstance(body, StreamReader):
            conn.transport.write(head)
            response._sender = asyncio.get_running_loop().create_task(_send_body(conn, response, body, stream, body_idle))
        else:
            conn.transport.write(head + body if body else head)
            response._sent = True
        return response

    def _take(self, address: Address) -> Connection | None:
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self, address: Address) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout or None):
                if isinstance(address, str):
                    _, conn = await loop.create_unix_connection(lambda: Connection(self, address), address)
                else:
                    _, conn = await loop.create_connection(lambda: Connection(self, address), address[0], address[1])
        except (OSError, TimeoutError) as exc:
            raise UpstreamUnreachable(f"upstream unavailable: {exc.__class__.__name__}") from None
        return conn

    def _put(self, conn: Connection) -> None:
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


async def _send_body(conn: Connection, response: Response, body: StreamReader, chunked: bool, idle: float = 0.0) -> None:
    """Copy a streamed request body upstream, as it comes, with flow control both ways. A body
    that sends nothing for ``idle`` seconds cuts the exchange (``next_piece``)."""
    assert conn.transport is not None
    transport = conn.transport
    try:
        while True:
            data = await next_piece(body, idle)
            if data is None:
                response._stalled = True
                conn.close()
                return
            if not data:
                break
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
