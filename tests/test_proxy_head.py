"""The response head of a proxied stream (``proxy.stream_response``): it goes out in the same
write as the first chunk when upstream sent both together (one packet, one wake-up of the next
hop), and alone, at once, when upstream sent its head and then thinks: a client is never kept
waiting for headers that arrived.

A real aiohttp server runs ``stream_response`` against a real upstream on a Unix socket that
writes what each test says; the client is a raw TCP socket. What the server wrote is seen by
recording its transport's writes (the tests run on asyncio's own loop, whose transport is
Python)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from multidict import CIMultiDict

from streamfaas.proxy import StreamLimits, open_upstream, stream_response
from streamfaas.upstream import Pool

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
FIRST = b"d\r\ndata: hello\n\n\r\n"
END = b"0\r\n\r\n"


@dataclass
class Stack:
    """An upstream that writes ``upstream.first`` on each request, then what the test sends
    through ``later``; and a proxy in front of it whose writes to its client are recorded."""

    url: str
    first: bytes = HEAD + FIRST
    later: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    writes: list[bytes] = field(default_factory=list)
    upstreams: list[asyncio.Transport] = field(default_factory=list)


class _Upstream(asyncio.Protocol):
    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.stack.upstreams.append(transport)

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(self.stack.first)
            asyncio.get_running_loop().create_task(self._rest())

    async def _rest(self) -> None:
        while not self.transport.is_closing():
            self.transport.write(await self.stack.later.get())


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    path = str(tmp_path / "up.sock")
    pool = Pool(unix_path=path)
    holder: list[Stack] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        recorded = holder[0].writes
        write, writelines = transport.write, transport.writelines

        def record(data: bytes) -> None:
            recorded.append(bytes(data))
            write(data)

        def record_lines(parts: list[bytes]) -> None:
            recorded.append(b"".join(parts))
            writelines(parts)

        transport.write = record  # type: ignore[method-assign]
        transport.writelines = record_lines  # type: ignore[method-assign,assignment]
        upstream = await open_upstream(pool, request.method, "http://up", "/", headers=CIMultiDict(), body=None, timeout=10)
        return await stream_response(request, upstream, limits=StreamLimits())

    app = web.Application()
    app.router.add_route("*", "/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    loop = asyncio.get_running_loop()
    holder.append(Stack(f"127.0.0.1:{port}"))
    upstream_server = await loop.create_unix_server(lambda: _Upstream(holder[0]), path)
    try:
        yield holder[0]
    finally:
        for transport in holder[0].upstreams:  # a stream left open by a failed test ends now
            transport.abort()
        upstream_server.close()
        pool.close()
        await runner.cleanup()


async def _get(stack: Stack, method: str = "GET") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = stack.url.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return reader, writer


async def test_the_head_and_a_first_chunk_at_hand_go_out_in_one_write(stack: Stack) -> None:
    reader, writer = await _get(stack)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert await asyncio.wait_for(reader.readexactly(len(FIRST)), 10) == FIRST
    stack.later.put_nowait(END)
    assert await asyncio.wait_for(reader.readexactly(len(END)), 10) == END
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    first = stack.writes[0]
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n" + FIRST), stack.writes


async def test_a_head_that_came_alone_reaches_the_client_before_any_chunk(stack: Stack) -> None:
    stack.first = HEAD
    reader, writer = await _get(stack)
    # Upstream sends nothing more until the client has the head: held back, this would time out.
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Type: text/event-stream" in head
    assert stack.writes == [head]
    stack.later.put_nowait(FIRST + END)
    assert await asyncio.wait_for(reader.readexactly(len(FIRST + END)), 10) == FIRST + END
    writer.close()


async def test_an_empty_body_at_hand_goes_out_with_its_head(stack: Stack) -> None:
    stack.first = HEAD + END
    reader, writer = await _get(stack)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert await asyncio.wait_for(reader.readexactly(len(END)), 10) == END
    writer.close()
    assert stack.writes == [head + END]


async def test_a_head_request_gets_the_head_alone(stack: Stack) -> None:
    stack.first = HEAD
    reader, writer = await _get(stack, "HEAD")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection goes on
    stack.later.put_nowait(FIRST + END)
    second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and second.startswith(b"HTTP/1.1 200 OK\r\n")
    assert stack.writes[0] == head
