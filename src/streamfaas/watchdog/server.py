"""The watchdog's HTTP side: health, readiness, limits, and the mode's handler: the streaming
proxy to the function server (``http``), a process per request (``streaming``,
``serializing``), or a folder (``static``)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
from aiohttp import hdrs, web

from .._process import listen_backlog, listening_socket
from ..admission import Admission
from ..config import WatchdogConfig
from ..errors import StreamfaasError
from ..proxy import StreamLimits, error_response, forward_headers, open_upstream, stream_response
from ..upstream import Pool
from .forking import invoke_serializing, invoke_streaming, read_body
from .function_process import FunctionProcess
from .spawn import RequestCommand, Spawned
from .start_report import READY, report_failure
from .static import serve_static

# What a replica runs: its function server (http mode), the command each request starts
# (streaming, serializing), or the folder it serves (static, as a resolved path).
Backend = Spawned | RequestCommand | str
Handler = Callable[[web.Request, "WatchdogState"], Awaitable[web.StreamResponse]]

CONFIG_KEY = web.AppKey("config", WatchdogConfig)


class WatchdogState:
    def __init__(self, config: WatchdogConfig, function: FunctionProcess | None, handle: Handler) -> None:
        self.config = config
        self.function = function  # None in the modes without a function server
        self.handle = handle
        self.ready = False
        self.healthy = True  # the last periodic probe of the function server answered
        self.draining = False
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.session: aiohttp.ClientSession | None = None  # health probes
        self.pool: Pool | None = None  # requests
        self.admission = Admission()  # the gateway's default (admission.py)

    @property
    def function_down(self) -> bool:
        return self.function is not None and self.function.exited.is_set()


STATE_KEY = web.AppKey("state", WatchdogState)


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if state.ready and state.healthy and not state.function_down:
        return web.Response(text="OK\n")
    return web.Response(status=503, text="function not healthy\n")


async def probe_health(state: WatchdogState) -> None:
    """Every ``healthcheck_interval``, check that the function server still answers."""
    interval = state.config.healthcheck_interval
    function = state.function
    if interval <= 0 or state.session is None or function is None:
        return
    while True:
        await asyncio.sleep(interval)
        state.healthy = await function.answers(state.session, timeout=interval)


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if not state.ready or state.draining or state.function_down:
        return web.Response(status=503, text="function not ready\n")
    limit = state.config.max_inflight
    if limit and state.inflight >= limit:
        return web.Response(status=429, text="at capacity\n")
    return web.Response(text="OK\n")


async def invoke(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    await state.admission.enter()
    config = state.config
    # While draining we still serve: the gateway stopped routing here before SIGTERM, so only
    # requests already on their way arrive, and refusing them would fail them for nothing.
    if not state.ready or state.function_down:
        return error_response("function is not ready", 503)
    if config.max_inflight and state.inflight >= config.max_inflight:
        return error_response(f"concurrent request limit exceeded (max_inflight={config.max_inflight})", 429)
    state.inflight += 1
    state.idle.clear()
    try:
        return await state.handle(request, state)
    except StreamfaasError as exc:
        return error_response(str(exc), exc.http_status)
    finally:
        state.inflight -= 1
        if state.inflight == 0:
            state.idle.set()


async def proxy_to_function(request: web.Request, state: WatchdogState) -> web.StreamResponse:
    """HTTP mode: pass the request to the function server and stream its answer back."""
    config = state.config
    function = state.function
    assert function is not None and state.pool is not None
    started = time.monotonic()
    headers = forward_headers(request.headers)
    headers[hdrs.HOST] = request.host
    body: bytes | aiohttp.StreamReader | None = None
    if config.buffer_body:
        try:
            body = await read_body(request, config)
        except StreamfaasError as exc:  # too slow (408) or too large (413)
            return error_response(str(exc), exc.http_status)
    elif request.body_exists:
        body = request.content
        if request.content_length is not None:
            headers[hdrs.CONTENT_LENGTH] = str(request.content_length)
    total = config.exec_timeout
    headers_limit = min(x for x in (config.write_timeout, total) if x) if (config.write_timeout or total) else 0.0
    upstream = await open_upstream(
        state.pool,
        request.method,
        function.upstream_url,
        request.rel_url.raw_path_qs,
        headers=headers,
        body=body,
        timeout=headers_limit,
        body_idle=config.read_timeout if isinstance(body, aiohttp.StreamReader) else 0.0,
    )
    elapsed = time.monotonic() - started
    extra = None
    if upstream.content_length is not None:
        extra = {"X-Duration-Seconds": f"{elapsed:.6f}"}
    remaining = max(total - elapsed, 0.001) if total else 0.0
    return await stream_response(
        request,
        upstream,
        limits=StreamLimits(idle=config.idle_timeout, total=remaining, total_setting=total),
        extra_headers=extra,  # type: ignore[arg-type]
    )


def _mode_handler(config: WatchdogConfig, backend: Backend) -> Handler:
    if isinstance(backend, Spawned):
        return proxy_to_function
    if isinstance(backend, RequestCommand):
        per_request = invoke_streaming if config.mode == "streaming" else invoke_serializing
        return lambda request, state: per_request(request, state.config, backend)
    return lambda request, state: serve_static(request, backend)


def create_app(config: WatchdogConfig, backend: Backend, function: FunctionProcess | None = None) -> web.Application:
    app = web.Application(client_max_size=0)
    app[CONFIG_KEY] = config
    app[STATE_KEY] = WatchdogState(config, function, _mode_handler(config, backend))
    app.router.add_get("/_/health", health)
    app.router.add_get("/_/ready", ready)
    app.router.add_route("*", "/{tail:.*}", invoke)
    return app


async def run(config: WatchdogConfig, backend: Backend, stopping: Sequence[int] = ()) -> int:
    """Run one replica until SIGTERM (drain, exit 0) or the function process dies (exit 1).
    ``stopping``: signals that came before this loop handled them (the stop is honoured now)."""
    function = FunctionProcess(config, backend) if isinstance(backend, Spawned) else None
    app = create_app(config, backend, function)
    state = app[STATE_KEY]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if stopping:
        stop.set()

    if config.listen_fd is not None:
        sock = socket.socket(fileno=config.listen_fd)
    else:
        sock = listening_socket(config.host, config.port)
    address = sock.getsockname()
    # auto_decompress off: a body reaches the function as its client encoded it (the gateway's note).
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, auto_decompress=False)
    await runner.setup()
    site = web.SockSite(runner, sock, backlog=listen_backlog())  # it listens again: 128 unless told
    await site.start()
    where = f"unix:{address}" if isinstance(address, str) else f"http://{config.host}:{address[1]}"
    note(config, f"watchdog listening on {where}")

    code = 0
    try:
        if function is not None:
            code = await _run_function_server(state, function, site, stop)
        else:
            # Nothing to wait for: each request starts its own process, or reads a file.
            state.ready = True
            note(config, f"function {config.function_name} ready ({config.mode} mode)")
            _signal_ready(config.ready_fd)
            await stop.wait()
            state.draining = True
        if stop.is_set() and config.shutdown_delay:
            # Not ready any more, still serving: requests sent before every gateway saw the pod
            # go are served, not refused or reset.
            await asyncio.sleep(config.shutdown_delay)
        # Let in-flight requests finish (or, when the function died, report their failure).
        try:
            await asyncio.wait_for(state.idle.wait(), config.drain_timeout or None)
        except TimeoutError:
            note(config, f"drain timeout: {state.inflight} request(s) still in flight", error=True)
    except StreamfaasError as exc:
        note(config, str(exc), error=True)
        if not state.ready:  # a failed start: tell the provider why (the pipe is still open)
            report_failure(config.ready_fd, str(exc), function.stderr_tail if function is not None else ())
        code = 1
    finally:
        if function is not None:
            await function.stop()
        await runner.cleanup()  # cancels what still runs: per-request processes are killed
        if state.session is not None:
            await state.session.close()
        if state.pool is not None:
            state.pool.close()
    return code


async def _run_function_server(state: WatchdogState, function: FunctionProcess, site: web.BaseSite, stop: asyncio.Event) -> int:
    """HTTP mode: start the function server, serve once it answers, until SIGTERM or its exit."""
    config = state.config
    state.session = aiohttp.ClientSession(
        connector=function.connector(),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        # Pass the request's headers as they came: add no Accept, Accept-Encoding, User-Agent
        # or Content-Type (the function would take them for the caller's).
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
    )
    state.pool = function.pool()
    await function.start()
    waiter = asyncio.create_task(function.exited.wait())
    stopper = asyncio.create_task(stop.wait())
    try:
        ready_task = asyncio.create_task(function.wait_ready(config.ready_timeout))
        done, _ = await asyncio.wait({ready_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if ready_task in done:
            ready_task.result()
            state.ready = True
            spawned = function.spawned
            where = f"unix:{spawned.socket_path}" if spawned.socket_path else function.upstream_url
            note(config, f"function {config.function_name} ready at {where}")
            _signal_ready(config.ready_fd)
            prober = asyncio.create_task(probe_health(state))
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                prober.cancel()
                await asyncio.gather(prober, return_exceptions=True)
        else:
            ready_task.cancel()
            await asyncio.gather(ready_task, return_exceptions=True)
    finally:
        waiter.cancel()
        stopper.cancel()
        await asyncio.gather(waiter, stopper, return_exceptions=True)
    state.draining = True
    if function.exited.is_set():
        # Refuse new connections at once so the gateway sends them to a live replica;
        # requests already here still get their answer (or their error event).
        await site.stop()
        note(config, f"function process exited with code {function.returncode}", error=True)
        return 1
    return 0


def note(config: WatchdogConfig, text: str, *, error: bool = False) -> None:
    """One line of the watchdog's own, stamped and named like the function's output lines,
    so `logs --since` and log readers place it in time."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    stream = sys.stderr if error else sys.stdout
    print(f"{stamp} {config.function_name}[{config.replica_id}] watchdog: {text}", file=stream, flush=True)


def _signal_ready(fd: int | None) -> None:
    """Tell the process that started us (the local provider) that we serve now."""
    if fd is None:
        return
    try:
        os.write(fd, READY)
    except OSError:
        pass
    finally:
        os.close(fd)
