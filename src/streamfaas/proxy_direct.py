"""Direct delivery: a chunk from upstream written to the client by the upstream connection's own
read callback, while the copy loop is parked waiting for exactly that chunk.

The copy loop in ``proxy.stream_response`` reads each chunk from the upstream body
(``_upstream_conn.Body``) and writes it with ``StreamResponse.write``: per chunk, the parser wakes a future, the event loop
schedules the task, and the task writes. Under load the task waits its turn behind every other
ready task, and that wait, not the copy, is most of an event's delay while a burst of streams
opens (bench_burst.py); it is also most of a chunk's CPU in both hops.

Here the chunk goes out from the body's ``sink``, which the response parser's callback calls as
the bytes arrive, when nothing could be reordered by it:

* the copy loop is waiting in ``readany`` and nothing is buffered ahead (else it takes the chunk
  the usual way);
* the client's write buffer is empty and its connection open (else the loop's write and
  aiohttp's flow control handle it);
* the response is chunked and its first chunk went out through aiohttp (its headers with it).

The parser (httptools) still parses everything: this only changes where a parsed chunk is written.
The chunk is framed as aiohttp frames one (``len-hex CRLF data CRLF``), in one ``writelines``,
so a heartbeat written by ``resp.write`` can only come between two chunks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ._upstream_conn import Body


class Direct:
    """One stream's direct delivery; counts what it sent for the copy loop's totals."""

    __slots__ = ("_transport", "_progress", "_count_events", "nbytes", "events")

    def __init__(
        self, transport: asyncio.WriteTransport, progress: Any, count_events: bool
    ) -> None:
        self._transport = transport
        self._progress = progress  # proxy._IdleWatch: its chunk counter and last chunk
        self._count_events = count_events
        self.nbytes = 0
        self.events = 0

    def take(self, data: bytes) -> bool:
        transport = self._transport
        if transport.is_closing() or transport.get_write_buffer_size():
            return False
        transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        progress = self._progress
        progress.chunks += 1
        progress.last = data
        self.nbytes += len(data)
        if self._count_events:
            self.events += data.count(b"\n\n")
        return True


def attach(
    body: Body,
    request: web.BaseRequest,
    resp: web.StreamResponse,
    progress: Any,
    count_events: bool,
) -> Direct | None:
    """Direct delivery from ``body`` to ``resp``'s client, where it can be done: None where not
    (a body that is not chunked, no transport). Call ``detach``."""
    transport = request.transport
    if (
        transport is None
        or resp.headers.get("Transfer-Encoding", "").lower() != "chunked"
        or resp.compression
    ):
        return None
    direct = Direct(transport, progress, count_events)
    body.sink = direct.take
    return direct


def detach(body: Body) -> None:
    body.sink = None
