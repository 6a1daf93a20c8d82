"""``streamfaas queue-worker``: a queue worker in its own process, next to one or more gateways.

It uses the admin's credentials for one thing only: to learn, from the gateway's admin API,
whether a job's function is private and, if so, its token. Jobs themselves are run with that
token or with no credential at all. With several gateways, each gets only the credentials stored
for its own URL.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .._process import listen_backlog, listening_socket
from ..config import QueueConfig
from ..gateway.auth import is_private
from . import open_queue
from .gateways import GatewayList
from .metrics import QueueMetrics
from .worker import QueueWorker, TokenUnavailable, worker_id

log = logging.getLogger("streamfaas.queue")
_TOKEN_TTL = 5.0  # seconds a function's privacy and token are reused before asking again
_ADMIN_TIMEOUT = 10.0


def _basic(auth: tuple[str, str]) -> str:
    # A ready header rather than aiohttp.BasicAuth, which newer aiohttp deprecates.
    return "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()


class AdminApiTokens:
    """Private functions' tokens, from a gateway's admin API as ``streamfaas token NAME`` gets
    them. Each gateway's credentials go to that gateway's ``/system/function*`` routes alone;
    a gateway that cannot be reached is skipped for the next one that has credentials."""

    def __init__(self, session: aiohttp.ClientSession, gateways: GatewayList,
                 auths: Mapping[str, tuple[str, str] | None]) -> None:
        self._session = session
        self._gateways = gateways
        self._auths = {url.rstrip("/"): _basic(auth) for url, auth in auths.items() if auth}
        self._known: dict[str, tuple[float, str | None]] = {}

    async def __call__(self, function: str) -> str | None:
        if not self._auths:
            return None  # without admin access, only public functions can run
        now = time.monotonic()
        known = self._known.get(function)
        if known is not None and known[0] > now:
            return known[1]
        name = quote(function, safe="")
        token: str | None = None
        status = await self._get(function, f"/system/function/{name}")
        if status is not None and is_private(status.get("labels") or {}, status.get("annotations") or {}):
            answer = await self._get(function, f"/system/function-token/{name}")
            token = str(answer["token"]) if answer is not None else None
        self._known[function] = (now + _TOKEN_TTL, token)
        return token

    async def _get(self, function: str, path: str) -> dict[str, Any] | None:
        """The JSON object at ``path`` from the first gateway that answers; None where it does
        not know the function or refuses its credentials (the call then gets its own 404 or 401)."""
        gateways = [g for g in self._gateways.ordered() if g in self._auths]
        for i, gateway in enumerate(gateways):
            try:
                return await self._get_from(gateway, function, path)
            except TokenUnavailable:
                if i == len(gateways) - 1:
                    raise
                self._gateways.failed(gateway)
        return None

    async def _get_from(self, gateway: str, function: str, path: str) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(_ADMIN_TIMEOUT):
                async with self._session.get(gateway + path, headers={"Authorization": self._auths[gateway]},
                                             allow_redirects=False) as resp:
                    if resp.status in {401, 403}:
                        log.warning("queue worker: the gateway refused the admin credentials (HTTP %d), so private "
                                    "functions cannot run: `streamfaas login --gateway %s`", resp.status, gateway)
                        return None
                    if resp.status == 404:
                        return None
                    if resp.status != 200:
                        raise TokenUnavailable(f"cannot tell whether {function!r} is private: GET {path} answered HTTP {resp.status}")
                    data = await resp.json(content_type=None)
        except TimeoutError:
            raise TokenUnavailable(f"cannot tell whether {function!r} is private: GET {path} timed out") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise TokenUnavailable(f"cannot tell whether {function!r} is private: GET {path}: {exc.__class__.__name__}") from None
        if not isinstance(data, dict):
            raise TokenUnavailable(f"cannot tell whether {function!r} is private: GET {path} did not answer a JSON object")
        return data


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
    await web.SockSite(runner, sock, backlog=listen_backlog()).start()
    return runner, sock.getsockname()[1]


async def serve_worker(
    config: QueueConfig,
    gateway_urls: Sequence[str],
    state_dir: Path,
    *,
    auths: Mapping[str, tuple[str, str] | None] | None = None,
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = None,
) -> None:
    """Work until SIGTERM or SIGINT; in-flight jobs then finish or go back to the queue.
    ``auths``: the admin's credentials for each gateway URL that has them, used only to get
    private functions' tokens."""
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
        gateways = GatewayList(gateway_urls)
        plural = "s" if len(gateways.urls) > 1 else ""
        print(f"streamfaas queue-worker {name}: {queue.name} queue, gateway{plural} {gateways}{where}", flush=True)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as admin:
            tokens = AdminApiTokens(admin, gateways, auths or {})
            worker = QueueWorker(queue, config, gateways, metrics=QueueMetrics(registry), name=name, tokens=tokens)
            await worker.run(stop)
        print(f"streamfaas queue-worker {name} stopped", file=sys.stderr, flush=True)
    finally:
        await queue.close()
        if runner is not None:
            await runner.cleanup()


def run_worker(
    config: QueueConfig,
    gateway_urls: Sequence[str],
    state_dir: Path,
    *,
    auths: Mapping[str, tuple[str, str] | None] | None = None,
    metrics_port: int | None = None,
) -> None:
    main = serve_worker(config, gateway_urls, state_dir, auths=auths, metrics_port=metrics_port)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(main)
    else:
        uvloop.run(main)
