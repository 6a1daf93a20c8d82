"""Deadlines for the gateway's client connections, against slowloris and idle hoarding.

aiohttp closes a kept-alive connection that stays idle for ``keepalive_timeout``, but gives a
request head all of that time, however slowly it trickles in. Here a connection must deliver
each request head within ``header_timeout`` of its first byte (of the connection's start, for
the first request), or it is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler


class _HeadDeadlineHandler(RequestHandler):
    """aiohttp's connection handler, plus a timer that runs while a request head is awaited."""

    __slots__ = ("_header_timeout", "_head_timer")

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_head_timer()  # a connection that sends nothing at all is closed too

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            # aiohttp arms its keep-alive timer when the connection opens and lets it run out
            # even once a request is in (it then finds the handler busy and does nothing): a
            # timer held by every new stream for its first keepalive_timeout, ≈ 0.5 KiB of the
            # gateway's ≈ 20 KiB a stream (bench/stream_memory.py). The head timer above covers
            # a connection that sends nothing, and aiohttp arms the keep-alive timer again once
            # the response is done, for the idle time between requests.
            keepalive = self._keepalive_handle
            if keepalive is not None:
                keepalive.cancel()
                self._keepalive_handle = None
        elif self._head_timer is None and self._waiter is not None and not self._waiter.done():
            # Part of a head on a connection that sat idle between requests. A head that
            # arrives whole, the usual case, never starts a timer.
            self._start_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _start_head_timer(self) -> None:
        if self._header_timeout > 0:
            self._head_timer = self._loop.call_later(self._header_timeout, self._head_overdue)

    def _head_overdue(self) -> None:
        self._head_timer = None
        self.force_close()


class _HeadDeadlineServer(web.Server):
    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return _HeadDeadlineHandler(self, loop=self._loop, header_timeout=self._header_timeout, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An ``AppRunner`` whose connections get ``header_timeout`` for each request head and are
    closed after ``keepalive_timeout`` idle (0: closed after each response)."""

    def __init__(
        self, app: web.Application, *, header_timeout: float, keepalive_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(app, keepalive_timeout=keepalive_timeout, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        # aiohttp builds the app's Server itself; rebuild it with the same settings so that each
        # connection gets the handler above.
        server = await super()._make_server()
        return _HeadDeadlineServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            header_timeout=self._header_timeout,
            **server._kwargs,
        )
