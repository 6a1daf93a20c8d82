"""``streamfaas queue-worker``: a queue worker in its own process, next to one or more gateways."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .._process import listening_socket
from ..config import QueueConfig
from . import open_queue
from .metrics import QueueMetrics
from .worker import QueueWorker, worker_id


async def _serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[web.AppRunner, int]:
    async def metrics(_request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = listening_socket(host, port)
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]


async def serve_worker(
    config: QueueConfig,
    gateway_url: str,
    state_dir: Path,
    *,
    auth: tuple[str, str] | None = None,
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = None,
) -> None:
    """Work until SIGTERM or SIGINT; in-flight jobs then finish or go back to the queue."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    queue = open_queue(config, state_dir)
    await queue.start()
    registry = CollectorRegistry()
    runner: web.AppRunner | None = None
    name = worker_id()
    try:
        where = ""
        if metrics_port is not None:
            runner, port = await _serve_metrics(registry, metrics_host, metrics_port)
            where = f", metrics on http://{metrics_host}:{port}/metrics"
        print(f"streamfaas queue-worker {name}: {queue.name} queue, gateway {gateway_url}{where}", flush=True)
        worker = QueueWorker(queue, config, gateway_url, metrics=QueueMetrics(registry), name=name, auth=auth)
        await worker.run(stop)
        print(f"streamfaas queue-worker {name} stopped", file=sys.stderr, flush=True)
    finally:
        await queue.close()
        if runner is not None:
            await runner.cleanup()


def run_worker(
    config: QueueConfig,
    gateway_url: str,
    state_dir: Path,
    *,
    auth: tuple[str, str] | None = None,
    metrics_port: int | None = None,
) -> None:
    main = serve_worker(config, gateway_url, state_dir, auth=auth, metrics_port=metrics_port)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(main)
    else:
        uvloop.run(main)
