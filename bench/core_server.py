"""The bench's function server: an aiohttp app that holds thousands of mostly idle streams.

bench_core.py deploys it through the gateway as a function's ``fprocess`` (``envProcess``), so
it runs behind a real watchdog: the watchdog hands it the listening socket in
``STREAMFAAS_LISTEN_FD``. It is self-contained (aiohttp + uvloop, which the platform has).

Routes:
  GET /_/health            readiness, for the watchdog
  GET /ticks?interval=S&count=N
                           an event stream: ``: ok`` at once (so headers and the first byte go out),
                           then one ``data: <monotonic ns> <n>`` event every S seconds (n = 1, 2,
                           …: a gap shows a lost event), starting at a random phase within the
                           first interval; N events (0: until the client goes away)
  GET /burst?seconds=S&size=B
                           B-byte events back to back for S seconds, then the end of the stream
  GET /stats               {"open": streams open now, "pid": ...}
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import time

from aiohttp import web

OPEN = 0
MAX_SECONDS = 600.0  # no stream outlives this, whatever the query asks


async def health(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def stats(request: web.Request) -> web.Response:
    return web.Response(
        text=json.dumps({"open": OPEN, "pid": os.getpid()}), content_type="application/json"
    )


async def _start(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    # aiohttp holds the headers back until the first body write; a comment sends both now.
    await resp.write(b": ok\n\n")
    return resp


async def ticks(request: web.Request) -> web.StreamResponse:
    global OPEN
    interval = max(float(request.query.get("interval", "1")), 0.001)
    count = int(request.query.get("count", "0"))
    OPEN += 1
    try:
        resp = await _start(request)
        loop = asyncio.get_running_loop()
        start = loop.time()
        # Absolute schedule with a random phase: events of many streams spread evenly over time
        # and a late wake-up does not push every later event back.
        due = start + random.random() * interval
        limit = start + MAX_SECONDS
        sent = 0
        while (count == 0 or sent < count) and due < limit:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent += 1
            await resp.write(b"data: %d %d\n\n" % (time.monotonic_ns(), sent))
            due += interval
        await resp.write_eof()
        return resp
    finally:
        OPEN -= 1


async def burst(request: web.Request) -> web.StreamResponse:
    global OPEN
    seconds = min(float(request.query.get("seconds", "1")), MAX_SECONDS)
    size = max(int(request.query.get("size", "64")), 8)
    event = b"data: " + b"x" * (size - 8) + b"\n\n"
    OPEN += 1
    try:
        resp = await _start(request)
        write = resp.write
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(64):
                await write(event)
            # write() only yields when the socket is full; let the other streams run too.
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp
    finally:
        OPEN -= 1


def main() -> None:
    import uvloop

    app = web.Application()
    app.router.add_get("/_/health", health)
    app.router.add_get("/stats", stats)
    app.router.add_get("/ticks", ticks)
    app.router.add_get("/burst", burst)
    fd = os.environ.get("STREAMFAAS_LISTEN_FD")
    if fd:
        sock = socket.socket(fileno=int(fd))
    else:
        sock = socket.create_server(
            ("127.0.0.1", int(os.environ.get("PORT", "5000"))), backlog=4096
        )
    web.run_app(
        app,
        sock=sock,
        access_log=None,
        print=None,
        shutdown_timeout=1,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
