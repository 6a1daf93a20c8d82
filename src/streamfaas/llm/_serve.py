"""Running the model server: listen, announce the address, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from .._process import listen_backlog, listening_socket
from ._app import create_app, stop_generations
from ._settings import LLMSettings

# Streams are stopped before the runner shuts down, so this only bounds a stuck handler.
_SHUTDOWN_TIMEOUT = 5.0


async def serve_async(settings: LLMSettings, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set or the process gets SIGTERM/SIGINT.

    Once listening it prints ``streamfaas llm listening on http://HOST:PORT`` (one line, flushed)
    and writes the port to ``settings.port_file`` if set, so a parent that asked for port 0
    learns the port.
    """
    stop = stop or asyncio.Event()
    app = create_app(settings)
    # handler_cancellation: a client that disconnects cancels its handler at once, whose
    # `finally` then stops the generation; without it we would notice only at the next write.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()  # loads the model
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    try:
        sock = listening_socket(settings.host, settings.port)
        site = web.SockSite(runner, sock, shutdown_timeout=_SHUTDOWN_TIMEOUT, backlog=listen_backlog())
        await site.start()
        port = int(sock.getsockname()[1])
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
        if settings.port_file is not None:
            _write_port_file(settings.port_file, port)
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        sys.stdout.write(f"streamfaas llm listening on http://{host}:{port}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await stop_generations(app)
        await runner.cleanup()


def serve(settings: LLMSettings) -> None:
    """Run the model server in this thread until SIGTERM/SIGINT (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(serve_async(settings))
    else:
        uvloop.run(serve_async(settings))


def _write_port_file(path: Path, port: int) -> None:
    # Written whole then renamed, so a reader polling for the file never sees it half written.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n", encoding="utf-8")
    os.replace(tmp, path)
