"""The gateway: the front door. Builds the aiohttp application and runs it."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator

from aiohttp import web

from .._process import listening_socket
from ..config import GatewayConfig
from ..provider import LocalProvider
from .invoke import client_session, invoke_function
from .metrics import metrics_endpoint
from .state import STATE_KEY, GatewayState
from .system import add_routes, system_errors


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


def create_app(config: GatewayConfig, provider: LocalProvider | None = None) -> web.Application:
    provider = provider or LocalProvider(config.state_dir, cold_start_timeout=config.cold_start_timeout)
    app = web.Application(client_max_size=0, middlewares=[system_errors])
    state = GatewayState(config=config, provider=provider)
    app[STATE_KEY] = state

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        state.session = client_session()
        await provider.start()
        try:
            yield
        finally:
            await provider.close()
            await state.session.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_route("*", "/function/{name}", invoke_function)
    app.router.add_route("*", "/function/{name}/{tail:.*}", invoke_function)
    add_routes(app)
    return app


async def serve(config: GatewayConfig) -> None:
    """Run the gateway until SIGTERM or SIGINT; replicas are drained and stopped on the way out."""
    app = create_app(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sock = listening_socket(config.host, config.port)
    port = sock.getsockname()[1]
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, shutdown_timeout=5).start()
        url = f"http://{config.host}:{port}"
        if config.port_file is not None:
            config.port_file.write_text(f"{port}\n")
        print(f"streamfaas gateway listening on {url} (state: {config.state_dir})", flush=True)
        await stop.wait()
        print("streamfaas gateway stopping", file=sys.stderr, flush=True)
    finally:
        await runner.cleanup()
