"""Direct delivery: a chunk from upstream written to the client by the upstream connection's own
read callback, while the copy loop is parked waiting for exactly that chunk.

The copy loop in ``proxy.stream_response`` reads each chunk from aiohttp's ``StreamReader`` and
writes it with ``StreamResponse.write``: per chunk, the parser wakes a future, the event loop
schedules the task, and the task writes. Under load the task waits its turn behind every other
ready task, and that wait, not the copy, is most of an event's delay while a burst of streams
opens (bench_burst.py); it is also most of a chunk's CPU in both hops.

Here the chunk goes out from ``feed_data``, which aiohttp's parser calls as the bytes arrive,
when nothing could be reordered by it:

* the copy loop is waiting in ``readany`` and nothing is buffered ahead (else it takes the chunk
  the usual way);
* the client's write buffer is empty and its connection open (else the loop's write and
  aiohttp's flow control handle it);
* the response is chunked and its first chunk went out through aiohttp (its headers with it).

aiohttp's parser still parses everything: this only changes where a parsed chunk is written.
The chunk is framed as aiohttp frames one (``len-hex CRLF data CRLF``), in one ``writelines``,
so a heartbeat written by ``resp.write`` can only come between two chunks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import StreamReader, web


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


_ATTACHED: dict[StreamReader, Direct] = {}


class _DirectReader(StreamReader):
    """aiohttp's ``StreamReader`` with direct delivery; same layout (no slots of its own), so an
    upstream response's reader can be switched to it in place."""

    __slots__ = ()

    def feed_data(self, data: bytes, *args: Any) -> Any:
        direct = _ATTACHED.get(self)
        if (
            direct is not None
            and self._waiter is not None
            and not self._buffer
            and data
            and direct.take(data)
        ):
            return False
        return super().feed_data(data, *args)

    # aiohttp keeps each HTTP chunk's end for ``readchunk()``/``iter_chunks()``, in a deque
    # (760 bytes a stream, for the stream's whole life); a proxied body is read with
    # ``readany()`` only, so this reader keeps none.
    def begin_http_chunk_receiving(self) -> None:
        pass

    def end_http_chunk_receiving(self) -> None:
        pass


def adopt(reader: StreamReader) -> None:
    """Switch an upstream body's reader to this module's kind (in place, before it is read): it
    keeps no chunk boundaries, and ``attach`` can deliver from it directly later."""
    if type(reader) is StreamReader:
        reader.__class__ = _DirectReader
        reader._http_chunk_splits = None


def attach(
    reader: StreamReader,
    request: web.BaseRequest,
    resp: web.StreamResponse,
    progress: Any,
    count_events: bool,
) -> Direct | None:
    """Direct delivery from ``reader`` (``adopt``ed) to ``resp``'s client, where it can be done:
    None where not (a reader of another kind, a body that is not chunked, no transport). Call
    ``detach``."""
    transport = request.transport
    if (
        type(reader) is not _DirectReader
        or transport is None
        or resp.headers.get("Transfer-Encoding", "").lower() != "chunked"
        or resp.compression
    ):
        return None
    direct = _ATTACHED[reader] = Direct(transport, progress, count_events)
    return direct


def detach(reader: StreamReader) -> None:
    _ATTACHED.pop(reader, None)
