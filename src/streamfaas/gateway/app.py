"""The gateway: the front door. Builds the aiohttp application and runs it."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .._process import listen_backlog, listening_socket, open_files, raise_open_files_limit
from ..admission import Admission
from ..autoscale import Autoscaler, InflightCollector
from ..config import GatewayConfig
from ..provider import create_provider
from ..provider.base import Provider
from ..ui import add_ui_routes
from .async_invoke import ASYNC_KEY, add_async_routes, local_url
from .auth import (
    auth_middleware,
    forget_gateway_url,
    load_credentials,
    record_gateway_url,
    warn_no_auth,
)
from .connection_limits import GatewayRunner
from .invoke import invoke_function
from .journal import Journal
from .journal_nats import JETSTREAM_JOURNAL_AGE, JetStreamJournal
from .metrics import metrics_endpoint
from .state import STATE_KEY, GatewayState
from .stream_history import STREAM_HISTORY_KEY, StreamHistory, deployed_names
from .system import AUTOSCALER_KEY, add_routes, system_errors

# Descriptors a gateway holds besides its streams: listener, logs, the queue's database, each
# replica's pipes and kept-alive connections. Each stream holds two (client, upstream).
FD_MARGIN = 64
OPEN_FILES_LIMIT = web.AppKey("open_files_limit", int)


def stream_capacity(open_files_limit: int) -> int:
    """About how many streams fit under the descriptor limit."""
    return max((open_files_limit - FD_MARGIN) // 2, 0)


async def healthz(request: web.Request) -> web.Response:
    if request.query.get("verbose") not in ("1", "true"):
        return web.Response(text="OK\n")
    limit = request.app.get(OPEN_FILES_LIMIT, 0)
    body = {"status": "ok", "open_files_limit": limit, "open_files": open_files(), "streams_max": stream_capacity(limit)}
    return web.Response(text=json.dumps(body) + "\n", content_type="application/json")


def create_app(config: GatewayConfig, provider: Provider | None = None) -> web.Application:
    provider = provider or create_provider(config)
    credentials = None
    if config.auth:
        credentials, password_file = load_credentials(config.state_dir, config.auth_user, config.auth_password_file)
        print(f"streamfaas gateway: basic auth on /system and /ui, user {config.auth_user!r}, password in {password_file}", flush=True)
    loopback_names_only = credentials is None and not config.public_without_auth
    middlewares = [auth_middleware(credentials, metrics_auth=config.metrics_auth, loopback_names_only=loopback_names_only),
                   system_errors]
    app = web.Application(client_max_size=0, middlewares=middlewares)
    state = GatewayState(config=config, provider=provider, credentials=credentials,
                         journal=Journal(config.resume_journal_bytes), admission=Admission(config.admit_per_turn))
    app[STATE_KEY] = state
    cluster = None
    if provider.name == "kubernetes" and config.autoscale.enabled:
        # Several gateways share one cluster: one autoscaler decides (a Lease), on their summed load.
        from ..provider.kubernetes._lease import ClusterLoad

        cluster = ClusterLoad.for_provider(provider, interval=config.autoscale.interval)
        state.metrics.registry.register(cluster)
    autoscaler = Autoscaler(provider, cluster, config=config.autoscale, metrics=state.metrics.autoscale,
                            is_leader=cluster.is_leader if cluster is not None else lambda: True)
    app[AUTOSCALER_KEY] = autoscaler
    state.metrics.registry.register(InflightCollector(provider))

    if config.queue.backend == "nats":  # streams resume on any gateway sharing that NATS
        state.journal.mirror = JetStreamJournal(state.journal, config.queue.nats_url, config.queue.nats_stream,
                                                max_age=JETSTREAM_JOURNAL_AGE, max_bytes=config.resume_journal_bytes)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await app[ASYNC_KEY].start()  # first: a wrong queue setting fails before anything starts
        if state.journal.mirror is not None:
            await state.journal.mirror.start()
        await provider.start()
        if cluster is not None:
            await cluster.start()
        await autoscaler.start()
        try:
            yield
        finally:
            await autoscaler.close()  # first: it scales through the provider
            if cluster is not None:  # hands the Lease over before the provider's client closes
                await cluster.close()
            await app[ASYNC_KEY].close()  # its worker first: in-flight jobs still need the functions
            await state.journal.close()  # functions still streaming into it, before their replicas go
            await provider.close()

    app.cleanup_ctx.append(lifecycle)
    # After the provider's lifecycle, so it stops sampling before the provider closes.
    history = StreamHistory(state.metrics.streams, lambda: deployed_names(provider), interval=config.stream_history_interval)
    app[STREAM_HISTORY_KEY] = history
    app.cleanup_ctx.append(history.run)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_route("*", "/function/{name}", invoke_function)
    app.router.add_route("*", "/function/{name}/{tail:.*}", invoke_function)
    add_routes(app)
    add_async_routes(app, config, state.metrics.queue)
    add_ui_routes(app)
    return app


class _QuietBadRequests(logging.Filter):
    """aiohttp answers a malformed request with 400 and then logs its traceback; the 400 is
    the whole story, so keep the log for real errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


def configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.server").addFilter(_QuietBadRequests())


async def serve(config: GatewayConfig) -> None:
    """Run the gateway until SIGTERM or SIGINT; replicas are drained and stopped on the way out."""
    configure_logging()
    # Everything the gateway writes (queue, logs, deployments, credentials) is its own alone;
    # images and venvs, which function uids must read, are opened up explicitly.
    os.umask(0o077)
    nofile = raise_open_files_limit()
    app = create_app(config)
    app[OPEN_FILES_LIMIT] = nofile
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sock = listening_socket(config.host, config.port)
    port = sock.getsockname()[1]
    runner = GatewayRunner(
        app,
        header_timeout=config.header_timeout,
        keepalive_timeout=config.keepalive_timeout,
        handler_cancellation=True,
        access_log=None,
        # A body passes on as its client encoded it (as OpenFaaS's does), with its own
        # Content-Length and Content-Encoding: decompressed, it no longer matched them, and the
        # next hop read a different framing from the one the gateway sent.
        auto_decompress=False,
    )
    await runner.setup()
    # What start-up made (modules, the app, the provider's state) lives as long as the gateway:
    # frozen, the collector's full passes skip it, so they pause every stream for less. In 9
    # interleaved bench_burst runs each way the 1,000-stream TTFB p50 through/direct was 1.93×
    # against 2.27× (bench/README.md, fifteenth session).
    gc.collect()
    gc.freeze()
    own_url = ""
    try:
        # SockSite listens again, with its own backlog (128 unless told).
        await web.SockSite(runner, sock, shutdown_timeout=5, backlog=listen_backlog()).start()
        url = f"http://{config.host}:{port}"
        if not config.auth:
            warn_no_auth(url)  # before the port file, so whoever waits on that sees it written
        # Before the port file: whoever waits on it may run the CLI, which reads this record.
        own_url = local_url(config.host, port)
        record_gateway_url(config.state_dir, own_url)
        if config.port_file is not None:
            config.port_file.write_text(f"{port}\n")
        print(f"streamfaas gateway listening on {url} (state: {config.state_dir})", flush=True)
        print(f"streamfaas gateway: {nofile:,} open files allowed: about {stream_capacity(nofile):,} concurrent streams", flush=True)
        app[ASYNC_KEY].start_worker(local_url(config.host, port))
        await stop.wait()
        print("streamfaas gateway stopping", file=sys.stderr, flush=True)
        # Before the listener closes: the in-process worker's jobs still go through it.
        await app[ASYNC_KEY].stop_worker()
    finally:
        if own_url:
            forget_gateway_url(config.state_dir, own_url)
        await runner.cleanup()
