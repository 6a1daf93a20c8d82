#!/usr/bin/env python3
"""A bare gateway hop for bench_workers.py: one process, one event loop, the gateway's own
proxy code (admission per turn, the upstream pool, ``stream_response`` with its SSE settings)
in front of one watchdog's Unix socket, without the gateway's routing, auth and metrics.

    python bench/proxy_loop.py --watchdog PATH [--port N]

Listens on 127.0.0.1 with SO_REUSEPORT, so that several of these share one port as the
gateway's ``--workers`` would (issue 16, part 2); prints ``port N`` once it listens and runs
until SIGTERM. A measuring tool only: it is not a way to run streamfaas.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from pathlib import Path

import uvloop
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from streamfaas._process import listen_backlog  # noqa: E402
from streamfaas.admission import Admission  # noqa: E402
from streamfaas.config import SseSettings  # noqa: E402
from streamfaas.proxy import StreamLimits, forward_headers, open_upstream, stream_response  # noqa: E402
from streamfaas.upstream import Pool  # noqa: E402


def reuseport_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(listen_backlog())
    return sock


async def serve(watchdog: str, port: int) -> None:
    pool = Pool(unix_path=watchdog)
    admission = Admission()
    sse = SseSettings.from_env({})

    async def hop(request: web.Request) -> web.StreamResponse:
        await admission.enter()
        parts = request.rel_url.raw_path.split("/", 3)  # "", "function", NAME[, TAIL]
        path = "/" + (parts[3] if len(parts) > 3 else "")
        if request.rel_url.raw_query_string:
            path += "?" + request.rel_url.raw_query_string
        upstream = await open_upstream(
            pool, request.method, "http://localhost", path,
            headers=forward_headers(request.headers), body=None, timeout=60,
        )  # fmt: skip
        return await stream_response(request, upstream, limits=StreamLimits(), sse_settings=sse)

    app = web.Application()
    app.router.add_route("*", "/function/{name}", hop)
    app.router.add_route("*", "/function/{name}/{tail:.*}", hop)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    sock = reuseport_socket(port)
    await web.SockSite(runner, sock, backlog=listen_backlog()).start()
    print(f"port {sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchdog", required=True, help="the watchdog's Unix socket")
    parser.add_argument("--port", type=int, default=0, help="0: pick a free one")
    args = parser.parse_args()
    uvloop.run(serve(args.watchdog, args.port))


if __name__ == "__main__":
    main()
