"""The streaming proxy shared by the gateway and the watchdog.

Every chunk read from upstream is written to the client as soon as it arrives; nothing is
buffered. A failure after the headers went out is made visible: an ``event: error`` for event
streams, an aborted chunked body otherwise, never a silent truncated success.
"""

from __future__ import annotations

import asyncio
import errno
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiohttp import (
    BaseConnector,
    ClientConnectorError,
    ClientError,
    ClientOSError,
    ClientPayloadError,
    ClientResponse,
    ClientSession,
    ClientTimeout,
    DummyCookieJar,
    RequestInfo,
    ServerDisconnectedError,
    StreamReader,
    hdrs,
    web,
)
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import StreamfaasError, UpstreamError, UpstreamTimeout

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
_NO_TIMEOUT = ClientTimeout(total=None, connect=None, sock_connect=10, sock_read=None)


class UpstreamUnreachable(UpstreamError):
    """The connection could not be made: nothing was sent, so the request may go elsewhere."""


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
    named = {t.strip().lower() for t in headers.get(hdrs.CONNECTION, "").split(",") if t.strip()}
    skip = HOP_BY_HOP | named | {d.lower() for d in drop}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in skip)


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

    __slots__ = ("limit", "chunks", "_seen", "_handle", "_cm", "fired")

    def __init__(self, limit: float, cm: asyncio.Timeout) -> None:
        self.limit = limit
        self.chunks = 0
        self._seen = -1
        self._cm = cm
        self.fired = False
        self._handle: asyncio.TimerHandle | None = None
        if limit > 0:
            self._handle = asyncio.get_running_loop().call_later(limit, self._check)

    def _check(self) -> None:
        if self.chunks == self._seen:
            self.fired = True
            self._cm.reschedule(asyncio.get_running_loop().time())
            return
        self._seen = self.chunks
        self._handle = asyncio.get_running_loop().call_later(self.limit, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


async def open_upstream(
    session: ClientSession,
    method: str,
    url: str,
    *,
    headers: CIMultiDict[str],
    body: bytes | StreamReader | None,
    timeout: float,
) -> ClientResponse:
    """Send the request and wait for the response headers; map failures to 502/504."""
    try:
        async with asyncio.timeout(timeout or None):
            return await session.request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                auto_decompress=False,
                timeout=_NO_TIMEOUT,
            )
    except TimeoutError:
        raise UpstreamTimeout(f"upstream did not answer within {timeout:g}s") from None
    except ClientConnectorError as exc:
        raise UpstreamUnreachable(f"upstream unavailable: {exc.__class__.__name__}") from None
    except ClientError as exc:
        raise UpstreamError(f"upstream unavailable: {exc.__class__.__name__}") from None


def stream_failure(exc: BaseException) -> str:
    """Why a stream broke after its headers went out, in words a caller can act on. (The
    upstream is a function's server, or, seen from the gateway, its replica.)"""
    if isinstance(exc, ClientPayloadError | ServerDisconnectedError | asyncio.IncompleteReadError):
        return "the function closed the stream before finishing"
    if isinstance(exc, ClientOSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "the connection to the function was reset before the stream finished"
    return f"the stream from the function broke before finishing ({exc.__class__.__name__})"


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def _forget_head(upstream: ClientResponse) -> None:
    """Drop the sent request's headers, which aiohttp keeps in ``request_info`` for the
    response's whole life: ≈ 1.1 KiB of a gateway stream's ≈ 23 KiB, for hours on a long stream
    (bench/stream_memory.py). Nothing reads them once the response head is in."""
    info = upstream._request_info
    upstream._request_info = RequestInfo(info.url, info.method, _NO_HEADERS, info.real_url)


def response_headers(upstream: ClientResponse) -> CIMultiDict[str]:
    headers = forward_headers(upstream.headers)
    if is_event_stream(upstream.headers.get(hdrs.CONTENT_TYPE)):
        # A proxy in front (nginx and friends) must not hold events back.
        headers[hdrs.CACHE_CONTROL] = "no-cache"
        headers["X-Accel-Buffering"] = "no"
    return headers


async def stream_response(
    request: web.Request,
    upstream: ClientResponse,
    *,
    limits: StreamLimits,
    extra_headers: CIMultiDict[str] | None = None,
    on_chunk_error: Callable[[BaseException], None] | None = None,
) -> web.StreamResponse:
    """Send upstream's status and headers, then copy its body chunk by chunk until it ends.

    ``upstream`` is always closed (not returned to the pool) if the copy does not end cleanly,
    so a client that goes away closes the connection to the next hop at once.
    """
    headers = response_headers(upstream)
    if extra_headers:
        headers.update(extra_headers)
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    del headers  # copied into resp; a stream may live for hours, so hold no extra copy
    length = upstream.content_length
    if length is not None and upstream.headers.get(hdrs.TRANSFER_ENCODING) is None:
        resp.content_length = length
    sse = is_event_stream(upstream.headers.get(hdrs.CONTENT_TYPE))
    _forget_head(upstream)
    clean = False
    try:
        await resp.prepare(request)
        try:
            async with asyncio.timeout(limits.total or None) as cm:
                idle = _IdleWatch(limits.idle, cm)
                try:
                    read = upstream.content.readany
                    write = resp.write
                    while True:
                        chunk = await read()
                        if not chunk:
                            break
                        await write(chunk)
                        idle.chunks += 1
                finally:
                    idle.stop()
        except TimeoutError:
            which = "idle" if idle.fired else "total"
            total = limits.total_setting or limits.total
            failure: StreamfaasError = StreamTimeout(
                f"stream stopped: no data for {limits.idle:g}s"
                if which == "idle"
                else f"stream stopped: exceeded the {total:g}s limit"
            )
            await _fail_after_headers(request, resp, sse, failure, on_chunk_error)
            return resp
        except (ClientError, asyncio.IncompleteReadError) as exc:
            failure = UpstreamError(stream_failure(exc))
            await _fail_after_headers(request, resp, sse, failure, on_chunk_error)
            return resp
        await resp.write_eof()
        clean = True
        return resp
    finally:
        if clean:
            upstream.release()
        else:
            upstream.close()


async def _fail_after_headers(
    request: web.Request,
    resp: web.StreamResponse,
    sse: bool,
    failure: StreamfaasError,
    on_error: Callable[[BaseException], None] | None,
) -> None:
    if on_error is not None:
        on_error(failure)
    if sse:
        try:
            await resp.write(error_event(str(failure), failure.http_status))
            await resp.write_eof()
            return
        except (ConnectionError, RuntimeError):
            pass
    # Not an event stream: cut the chunked body so the client sees an incomplete response.
    # aiohttp's own write_eof then fails quietly on the closed transport.
    transport = request.transport
    if transport is not None:
        transport.abort()
