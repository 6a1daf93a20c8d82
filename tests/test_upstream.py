"""The upstream hop's client (``streamfaas/upstream.py`` and ``_upstream_conn.py``), against a real server on a Unix socket
that answers each request with bytes the test chooses: keep-alive reuse, bodies framed every
way HTTP allows, interim answers, HEAD, a broken or malformed answer, flow control, uploads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import ClientPayloadError, ClientSession, UnixConnector, web
from multidict import CIMultiDict

from streamfaas._upstream_conn import LIMIT
from streamfaas.errors import UpstreamError
from streamfaas.upstream import Pool, UpstreamUnreachable

BASE = "http://localhost"
SSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


@dataclass
class Server:
    """Answers each request head (and its body, by Content-Length or chunks) with ``answer``."""

    path: str
    answer: Callable[[bytes, asyncio.Transport], None]
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    transports: list[asyncio.Transport] = field(default_factory=list)


class _Peer(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections += 1
        self.server.transports.append(transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            lower = head.lower()
            if b"transfer-encoding: chunked" in lower:
                if b"\r\n0\r\n\r\n" not in b"\r\n" + rest:
                    return
                body, _, rest = rest.partition(b"0\r\n\r\n")
                request = head + b"\r\n\r\n" + body + b"0\r\n\r\n"
            else:
                length = 0
                for line in lower.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if len(rest) < length:
                    return
                request, rest = head + b"\r\n\r\n" + rest[:length], rest[length:]
            self.buffer = rest
            self.server.requests.append(request)
            self.server.answer(request, self.transport)


Answer = Callable[[bytes, asyncio.Transport], None]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[[Answer], Awaitable[Server]]]:
    servers: list[asyncio.AbstractServer] = []

    async def start(answer: Answer) -> Server:
        server = Server(str(tmp_path / f"s{len(servers)}.sock"), answer)
        servers.append(await asyncio.get_running_loop().create_unix_server(lambda: _Peer(server), server.path))
        return server

    yield start
    for s in servers:
        s.close()


def sse_answer(request: bytes, transport: asyncio.Transport) -> None:
    transport.write(SSE + b"d\r\ndata: hello\n\n\r\n0\r\n\r\n")


async def wait_until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_a_connection_is_reused_after_a_complete_response(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(sse_answer)
    pool = Pool(unix_path=server.path)
    for _ in range(3):
        r = await pool.request("GET", BASE, "/x?y=1", CIMultiDict({"Accept": "text/event-stream"}), None)
        assert (r.status, r.reason, r.headers["Content-Type"]) == (200, "OK", "text/event-stream")
        assert await r.content.read() == b"data: hello\n\n"
        r.release()
    assert server.connections == 1 and pool.idle_count() == 1
    assert server.requests[0].startswith(b"GET /x?y=1 HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n")
    pool.close()
    assert pool.idle_count() == 0


async def test_a_response_not_read_to_its_end_closes_its_connection(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(lambda req, t: t.write(SSE + b"d\r\ndata: hello\n\n\r\n"))  # never ends
    pool = Pool(unix_path=server.path)
    r = await pool.request("GET", BASE, "/", CIMultiDict(), None)
    assert await r.content.readany() == b"data: hello\n\n"
    r.release()  # not at its end: not reusable
    assert pool.idle_count() == 0
    await pool.request("GET", BASE, "/", CIMultiDict(), None)
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(sse_answer)
    pool = Pool(unix_path=server.path)
    r = await pool.request("GET", BASE, "/", CIMultiDict(), None)
    await r.content.read()
    r.release()
    server.transports[0].close()
    r = await pool.request("GET", BASE, "/", CIMultiDict(), None)
    assert await r.content.read() == b"data: hello\n\n"
    assert server.connections == 2


@pytest.mark.parametrize("method, retried", [("GET", True), ("POST", False)])
async def test_a_reused_connection_closed_under_a_request(serve, method: str, retried: bool) -> None:  # type: ignore[no-untyped-def]
    """The server closes a kept-alive connection just as the next request arrives on it: a GET
    goes again on a new connection; a POST, which may have been acted on, is a 502 kind of error."""
    answered: set[asyncio.Transport] = set()

    def answer(request: bytes, transport: asyncio.Transport) -> None:
        if transport in answered:
            transport.close()
            return
        answered.add(transport)
        sse_answer(request, transport)

    server = await serve(answer)
    pool = Pool(unix_path=server.path)
    r = await pool.request(method, BASE, "/", CIMultiDict(), None)
    await r.content.read()
    r.release()
    if retried:
        r = await pool.request(method, BASE, "/", CIMultiDict(), None)
        assert await r.content.read() == b"data: hello\n\n"
    else:
        with pytest.raises(UpstreamError):
            await pool.request(method, BASE, "/", CIMultiDict(), None)
    assert server.connections == (2 if retried else 1)


async def test_idle_connections_are_closed_after_keepalive(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(sse_answer)
    pool = Pool(unix_path=server.path, keepalive=0.2)
    r = await pool.request("GET", BASE, "/", CIMultiDict(), None)
    await r.content.read()
    r.release()
    assert pool.idle_count() == 1
    await wait_until(lambda: pool.idle_count() == 0, "the idle connection to be closed")


@pytest.mark.parametrize(
    "answer, body",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n", b"hello"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", b"ok"),
    ],
)
async def test_bodies_framed_each_way_arrive_whole(serve, answer: bytes, body: bytes) -> None:  # type: ignore[no-untyped-def]
    server = await serve(lambda req, t: t.write(answer))
    pool = Pool(unix_path=server.path)
    r = await pool.request("POST", BASE, "/", CIMultiDict(), b"in")
    assert await r.content.read() == body
    assert "Link" not in r.headers  # the interim answer's headers are not the response's
    r.release()
    assert pool.idle_count() == 1
    assert server.requests[0].endswith(b"Content-Length: 2\r\n\r\nin")


async def test_a_body_read_to_the_close_of_its_connection(serve) -> None:  # type: ignore[no-untyped-def]
    def answer(request: bytes, transport: asyncio.Transport) -> None:
        transport.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        transport.close()

    server = await serve(answer)
    pool = Pool(unix_path=server.path)
    r = await pool.request("GET", BASE, "/", CIMultiDict(), None)
    assert await r.content.read() == b"all of it"
    r.release()
    assert pool.idle_count() == 0


async def test_head_gets_no_body_whatever_its_length_says(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(lambda req, t: t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"))
    pool = Pool(unix_path=server.path)
    r = await asyncio.wait_for(pool.request("HEAD", BASE, "/", CIMultiDict(), None), 10)
    assert r.content_length == 100
    assert await asyncio.wait_for(r.content.read(), 10) == b""
    r.release()
    assert pool.idle_count() == 0  # the parser still expects a body: never reused


async def test_a_stream_cut_short_is_an_error_not_an_end(serve) -> None:  # type: ignore[no-untyped-def]
    def answer(request: bytes, transport: asyncio.Transport) -> None:
        transport.write(SSE + b"d\r\ndata: hello\n\n\r\n")
        transport.close()

    server = await serve(answer)
    r = await Pool(unix_path=server.path).request("GET", BASE, "/", CIMultiDict(), None)
    assert await r.content.readany() == b"data: hello\n\n"
    with pytest.raises(ClientPayloadError):
        await r.content.readany()


@pytest.mark.parametrize(
    "answer",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", b"SMTP ready\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
)
async def test_a_malformed_response_is_a_502_kind_of_error(serve, answer: bytes) -> None:  # type: ignore[no-untyped-def]
    server = await serve(lambda req, t: t.write(answer))
    with pytest.raises(UpstreamError) as caught:
        await Pool(unix_path=server.path).request("GET", BASE, "/", CIMultiDict(), None)
    assert str(caught.value).startswith("upstream unavailable")


def _endless(first: bytes, more: bytes) -> Answer:
    """A head that never ends: ``first``, then ``more`` again and again, in 16 KiB writes."""

    def answer(request: bytes, transport: asyncio.Transport) -> None:
        transport.write(first)

        def again() -> None:
            if not transport.is_closing():
                transport.write(more * (16384 // len(more)))
                asyncio.get_running_loop().call_soon(again)

        again()

    return answer


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (_endless(b"HTTP/1.1 200 OK\r\nX-Endless: ", b"a"), "larger than 64 KiB"),  # one header, never ending
        (_endless(b"HTTP/1.1 200 OK\r\n", b"X: a\r\n"), "more than 256 headers"),  # headers, never ending
        (_endless(b"HTTP/1.1 200 OK\r\n", b"X-Long-Header-Name: " + b"v" * 400 + b"\r\n"), "larger than 64 KiB"),
    ],
    ids=["one-endless-header", "endless-headers", "large-headers"],
)
async def test_a_response_head_past_its_bounds_is_refused_not_kept(serve, answer: Answer, why: str) -> None:  # type: ignore[no-untyped-def]
    # A function is untrusted code: what it sends before its body is bounded in size and count.
    server = await serve(answer)
    with pytest.raises(UpstreamError) as caught:
        async with asyncio.timeout(10):
            await Pool(unix_path=server.path).request("GET", BASE, "/", CIMultiDict(), None)
    assert why in str(caught.value)
    await wait_until(lambda: all(t.is_closing() for t in server.transports), "the function's connection to close")


async def test_an_endless_trailer_is_refused_not_kept(serve) -> None:  # type: ignore[no-untyped-def]
    # Trailers come after the body's last chunk; httptools gathers a header value whole (and
    # by repeated concatenation) before any callback: unbounded, a function grew its watchdog
    # by GiBs at quadratic CPU cost.
    server = await serve(_endless(SSE + b"d\r\ndata: hello\n\n\r\n0\r\nX-Trailer: ", b"a"))
    r = await Pool(unix_path=server.path).request("GET", BASE, "/", CIMultiDict(), None)
    assert await r.content.readany() == b"data: hello\n\n"
    with pytest.raises(ClientPayloadError) as caught:
        async with asyncio.timeout(10):
            while await r.content.readany():
                pass
    assert "framing or trailers larger than 64 KiB" in str(caught.value)
    await wait_until(lambda: all(t.is_closing() for t in server.transports), "the function's connection to close")


async def test_many_small_chunks_and_a_short_trailer_arrive_whole(serve) -> None:  # type: ignore[no-untyped-def]
    chunks = b"".join(b"1;ext=v\r\n%d\r\n" % (n % 10) for n in range(50000))  # 450 KB of framing for 50 KB
    server = await serve(lambda req, t: t.write(SSE + chunks + b"0\r\nX-Checksum: abc\r\n\r\n"))
    r = await Pool(unix_path=server.path).request("GET", BASE, "/", CIMultiDict(), None)
    got = b""
    while chunk := await r.content.readany():
        got += chunk
    assert got == b"".join(b"%d" % (n % 10) for n in range(50000))


async def test_a_head_just_under_the_bound_with_its_body_in_the_same_write_is_whole(serve) -> None:  # type: ignore[no-untyped-def]
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nX-Big: " + b"h" * 60000 + b"\r\n\r\n"
    body = b"b" * 100000
    server = await serve(lambda req, t: t.write(head + body))  # one write: head and body arrive together
    r = await Pool(unix_path=server.path).request("GET", BASE, "/", CIMultiDict(), None)
    assert r.status == 200 and len(r.headers["X-Big"]) == 60000
    got = b""
    while chunk := await r.content.readany():
        got += chunk
    assert got == body


@pytest.mark.parametrize("status", [b"000", b"099"])
async def test_a_status_that_is_not_an_http_status_is_refused(serve, status: bytes) -> None:  # type: ignore[no-untyped-def]
    server = await serve(lambda req, t: t.write(b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 2\r\n\r\nok"))
    with pytest.raises(UpstreamError) as caught:
        async with asyncio.timeout(10):
            await Pool(unix_path=server.path).request("GET", BASE, "/", CIMultiDict(), None)
    assert "not an HTTP status" in str(caught.value)


@pytest.mark.parametrize(
    "method, target, headers",
    [("GET", "/a b", {}), ("GET", "/a\r\nX: 1", {}), ("GET", "no-slash", {}), ("GET", "/", {"X-A": "1\r\nX-Injected: 1"}),
     ("GET", "/", {"X-A\n": "1"}), ("GET / HTTP/1.1\r\nX:", "/", {}), ("", "/", {})],
)
async def test_a_request_that_would_break_its_framing_is_not_sent(serve, method: str, target: str, headers: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    server = await serve(sse_answer)
    with pytest.raises(UpstreamError):
        await Pool(unix_path=server.path).request(method, BASE, target, CIMultiDict(headers), None)
    assert server.requests == []


async def test_any_method_that_is_a_token_goes_through(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(sse_answer)
    pool = Pool(unix_path=server.path)
    for method in ("M-SEARCH", "PROPFIND", "PATCH"):
        r = await pool.request(method, BASE, "/", CIMultiDict(), None)
        assert await r.content.read() == b"data: hello\n\n"
        r.release()
    assert [line.split(b" ", 1)[0] for line in server.requests] == [b"M-SEARCH", b"PROPFIND", b"PATCH"]


async def test_no_server_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(UpstreamUnreachable):
        await Pool(unix_path=str(tmp_path / "none.sock")).request("GET", BASE, "/", CIMultiDict(), None)


async def test_a_reader_that_falls_behind_pauses_the_upstream(serve) -> None:  # type: ignore[no-untyped-def]
    chunk = b"x" * 16384
    stop = asyncio.Event()

    def answer(request: bytes, transport: asyncio.Transport) -> None:
        transport.write(SSE)

        async def flood() -> None:
            while not stop.is_set() and not transport.is_closing():
                transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await asyncio.sleep(0)

        asyncio.get_running_loop().create_task(flood())

    server = await serve(answer)
    r = await Pool(unix_path=server.path).request("GET", BASE, "/", CIMultiDict(), None)
    # Unread, the body stops growing once past LIMIT: the server's writes back up instead.
    await wait_until(lambda: server.transports[0].get_write_buffer_size() > 4 * LIMIT, "the server's writes to back up")
    assert r.content._size <= LIMIT + 4 * len(chunk)
    got = 0
    while got < 8 * LIMIT:
        got += len(await r.content.readany())
    stop.set()
    r.close()


async def test_a_streamed_upload_goes_chunked_when_its_length_is_unknown(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A caller's upload of unknown length, relayed as it comes by an aiohttp server (as the
    gateway and the watchdog relay one)."""
    server = await serve(lambda req, t: t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    pool = Pool(unix_path=server.path)
    second = asyncio.Event()

    async def relay(request: web.Request) -> web.Response:
        r = await pool.request("PUT", BASE, "/", CIMultiDict(), request.content)
        body = await r.content.read()
        r.release()
        return web.Response(body=body)

    async def upload() -> AsyncIterator[bytes]:
        yield b"first,"
        await wait_until(lambda: server.connections == 1, "the relayed request to start")
        second.set()
        yield b"second"

    app = web.Application()
    app.router.add_put("/", relay)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.UnixSite(runner, str(tmp_path / "relay.sock")).start()
        async with ClientSession(connector=UnixConnector(path=str(tmp_path / "relay.sock"))) as session:
            async with session.put("http://relay/", data=upload()) as reply:
                assert await reply.read() == b"ok"
    finally:
        await runner.cleanup()
    assert second.is_set()
    assert server.requests[0].endswith(b"Transfer-Encoding: chunked\r\n\r\n6\r\nfirst,\r\n6\r\nsecond\r\n0\r\n\r\n")
    assert pool.idle_count() == 1
