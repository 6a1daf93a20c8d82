"""Many SSE streams held open at once from one background event loop, each recording when its
headers, first event and final event arrived, for tests and the autoscaling bench."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import aiohttp

FINAL = "event: end"  # the functions' last event: a stream that shows it was not cut


@dataclass
class Stream:
    body: str
    started: float = 0.0
    first_byte: float | None = None  # when its first event arrived (time.monotonic)
    ended: float | None = None
    status: int | None = None
    served_by: str = ""
    events: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def final(self) -> bool:
        """Its final event arrived: nothing cut it."""
        return any(e.startswith(FINAL) for e in self.events)


class Streams:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession | None = None
        self._pending: list[Future[Stream]] = []

    def open(self, url: str, body: str = "") -> Stream:
        stream = Stream(body=body, started=time.monotonic())
        self._pending.append(asyncio.run_coroutine_threadsafe(self._read(url, stream), self._loop))
        return stream

    async def _read(self, url: str, stream: Stream) -> Stream:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                  timeout=aiohttp.ClientTimeout(total=300))
        try:
            async with self._session.post(url, data=stream.body.encode()) as resp:
                stream.status = resp.status
                stream.served_by = resp.headers.get("X-Served-By", "")
                buffer = ""
                async for chunk in resp.content.iter_any():
                    buffer += chunk.decode()
                    *events, buffer = buffer.split("\n\n")
                    for event in events:
                        if event.startswith(":"):  # a heartbeat comment
                            continue
                        if stream.first_byte is None:
                            stream.first_byte = time.monotonic()
                        stream.events.append(event)
        except (aiohttp.ClientError, TimeoutError) as exc:
            stream.error = repr(exc)
        finally:
            stream.ended = time.monotonic()
        return stream

    def wait(self, timeout: float = 120.0) -> None:
        """Until every stream opened so far has ended (or fail at the deadline)."""
        deadline = time.monotonic() + timeout
        for future in self._pending:
            future.result(max(deadline - time.monotonic(), 0.001))

    def close(self) -> None:
        async def shut() -> None:
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()
            if self._session is not None:
                await self._session.close()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()
