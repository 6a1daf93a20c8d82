"""``/async-function/{name}[/{path}]`` and ``/system/queue``: accept now, run later, call back.

A request is stored durably (method, path and query as the caller encoded them, headers minus
credentials, body up to ``max_body``) before the 202 goes out. The queue worker, in this process
unless disabled or in ``streamfaas queue-worker`` processes, runs it through ``/function/{name}``
like any request, with no credential but a private function's own token. A callback URL whose
address the callback policy refuses (``--callback-allow``) is refused here with 400; a name is
checked by the worker, on what it resolves to as it connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from aiohttp import web
from yarl import URL

from .._origin import cross_site_reason
from ..config import GatewayConfig
from ..errors import BadRequest, FunctionNotFound
from ..proxy import forward_headers, read_capped
from ..queue import (
    AUTH_HEADERS,
    CallbackPolicy,
    FunctionTokens,
    Job,
    JobNotFound,
    JobQueue,
    QueueMetrics,
    QueueUnavailable,
    QueueWorker,
    check_path,
    open_queue,
)
from .auth import check_function_access, is_private
from .invoke import check_namespace, qualified_name, split_name, too_slow
from .state import STATE_KEY, GatewayState, state_of
from .system import json_body

log = logging.getLogger("streamfaas.gateway")
_DEPTH_INTERVAL = 1.0  # how often the depth gauge is refreshed
# X-Callback-Url is kept as the job's callback, not passed to the function: its credentials
# (user:password@, a token in the path or query) are the receiver's, not the function's.
_NOT_STORED = AUTH_HEADERS | {"x-call-id", "expect", "x-callback-url"}


class AsyncInvocations:
    """The gateway's queue, its in-process worker and the depth gauge, started and stopped together."""

    def __init__(self, config: GatewayConfig, metrics: QueueMetrics, tokens: FunctionTokens) -> None:
        self.config = config
        self.metrics = metrics
        self._tokens = tokens
        self.callback_policy = CallbackPolicy(config.queue.callback_allow)
        self._queue: JobQueue | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._worker_stop = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    @property
    def queue(self) -> JobQueue:
        if self._queue is None:
            raise QueueUnavailable("the async queue is not open")
        return self._queue

    async def start(self) -> None:
        queue = open_queue(self.config.queue, self.config.state_dir)
        await queue.start()
        self._queue = queue
        self._tasks.append(asyncio.create_task(self._refresh_depth(), name="queue-depth"))

    def start_worker(self, gateway_url: str) -> None:
        """Run a queue worker in this process against this gateway (once it listens). It never
        carries the admin's credentials, which would open every route to whoever controls a job:
        it calls a private function with that function's own token."""
        if not self.config.queue.worker or self._worker is not None:
            return
        worker = QueueWorker(self.queue, self.config.queue, gateway_url, metrics=self.metrics, tokens=self._tokens)
        self._worker = asyncio.create_task(worker.run(self._worker_stop), name="queue-worker")

    async def stop_worker(self) -> None:
        """Stop leasing; in-flight jobs finish within the drain timeout or go back to the queue."""
        worker, self._worker = self._worker, None
        if worker is not None:
            self._worker_stop.set()
            await worker

    async def close(self) -> None:
        await self.stop_worker()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        queue, self._queue = self._queue, None
        if queue is not None:
            await queue.close()

    async def _refresh_depth(self) -> None:
        gauge = self.metrics.depth
        while True:
            try:
                depth = await self.queue.depth()
            except QueueUnavailable as exc:
                log.warning("queue depth unavailable: %s", exc)
            else:
                gauge.labels(state="pending").set(depth.pending)
                gauge.labels(state="failed").set(depth.failed)
            await asyncio.sleep(_DEPTH_INTERVAL)


ASYNC_KEY = web.AppKey("streamfaas_async", AsyncInvocations)


def local_url(host: str, port: int) -> str:
    """How a process on this machine reaches a server listening on ``host``."""
    if host in {"", "0.0.0.0"}:
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _callback_url(raw: str | None, policy: CallbackPolicy) -> str | None:
    if not raw:
        return None
    try:
        url = URL(raw)
    except ValueError:
        url = None
    if url is None or url.scheme not in {"http", "https"} or not url.host:
        raise BadRequest(f"X-Callback-Url: expected an absolute http(s) URL, got {raw!r}")
    policy.check_url(raw)  # CallbackRefused: 400, and nothing is stored or run
    return raw


def _call_id(raw: str | None) -> str:
    if raw is None or raw == "":
        return str(uuid.uuid4())
    if len(raw) > 200 or not raw.isprintable():
        raise BadRequest("X-Call-Id: at most 200 printable characters")
    return raw


def _raw_tail(request: web.Request) -> str:
    """What followed ``/async-function/NAME``, as the caller encoded it: decoded, an escaped
    "/" or "?" would change where the call goes."""
    parts = request.rel_url.raw_path.split("/", 3)  # "", "async-function", NAME[, TAIL]
    path = "/" + parts[3] if len(parts) > 3 else ""
    try:
        return check_path(path)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _check_private(state: GatewayState, request: web.Request, name: str, namespace: str) -> bool:
    """A private function takes async calls only from those who may call it synchronously.
    True: the function is private and this caller may call it (its job runs with the token)."""
    d = state.provider.record(name, namespace).deployment
    header = request.headers.get("Authorization")
    return check_function_access(name, d.labels, d.annotations, header, state.credentials,
                                 lambda: state.provider.function_token(name, namespace), lambda: cross_site_reason(request))


async def submit_async(request: web.Request) -> web.Response:
    state = state_of(request)
    invocations = request.app[ASYNC_KEY]
    name, given = split_name(request.match_info["name"])
    namespace = check_namespace(state.provider, name, given)
    if not state.provider.has(name, namespace):
        raise FunctionNotFound(name)
    private_ok = _check_private(state, request, name, namespace)
    path = _raw_tail(request)
    callback = _callback_url(request.headers.get("X-Callback-Url"), invocations.callback_policy)
    call_id = _call_id(request.headers.get("X-Call-Id"))
    limit = state.config.queue.max_body
    too_large = f"request body is larger than the async limit of {limit} bytes (--max-async-body)"
    read_timeout = state.provider.record(name, namespace).body_limits.read_timeout
    body = await read_capped(request, limit, too_large, read_timeout=read_timeout, too_slow=too_slow(name, read_timeout))
    headers = forward_headers(request.headers, drop=_NOT_STORED)
    job = Job(
        call_id=call_id,
        function=qualified_name(name, namespace),  # what /function/ takes, and the worker calls
        method=request.method,
        path=path,
        query=request.rel_url.raw_query_string,
        headers=tuple(headers.items()),
        body=body,
        callback_url=callback,
        private_ok=private_ok,
    )
    await invocations.queue.submit(job)
    invocations.metrics.submitted.labels(function_name=job.function).inc()
    return web.Response(status=202, headers={"X-Call-Id": call_id, "X-Start-Time": str(time.time_ns())})


def _private_token(state: GatewayState, function: str) -> str | None:
    """The in-process worker's credential for a call: a private function's own token."""
    provider = state.provider
    name, given = split_name(function)
    namespace = given or ""
    if not provider.has(name, namespace):
        return None  # removed since (or not served): the gateway answers 404
    d = provider.record(name, namespace).deployment
    return provider.function_token(name, namespace) if is_private(d.labels, d.annotations) else None


def _flag(request: web.Request, key: str) -> bool:
    return request.query.get(key, "false").lower() in {"1", "true", "yes"}


async def list_queue(request: web.Request) -> web.Response:
    raw = request.query.get("limit", "100")
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest(f"limit: expected an integer, got {raw!r}") from None
    if not 1 <= limit <= 10_000:
        raise BadRequest("limit: between 1 and 10000")
    queue = request.app[ASYNC_KEY].queue
    jobs = await queue.list_jobs(failed=_flag(request, "failed"), limit=limit)
    depth = await queue.depth()
    return web.json_response({"depth": depth.to_json(), "jobs": [j.to_json() for j in jobs]})


async def retry_queue(request: web.Request) -> web.Response:
    data = await json_body(request, required=False)
    call_id = data.get("callId")
    retry_all = data.get("all") is True
    if retry_all == bool(call_id) or (call_id is not None and not isinstance(call_id, str)):
        raise BadRequest('send {"callId": "..."} for one dead-lettered job or {"all": true} for every one')
    count = await request.app[ASYNC_KEY].queue.retry_failed(None if retry_all else call_id)
    if call_id and count == 0:
        raise JobNotFound(f"no dead-lettered job with call id {call_id!r}")
    return web.json_response({"retried": count})


async def purge_queue(request: web.Request) -> web.Response:
    count = await request.app[ASYNC_KEY].queue.purge(failed=_flag(request, "failed"))
    return web.json_response({"purged": count})


def add_async_routes(app: web.Application, config: GatewayConfig, metrics: QueueMetrics) -> AsyncInvocations:
    async def private_token(name: str) -> str | None:
        return _private_token(app[STATE_KEY], name)

    invocations = AsyncInvocations(config, metrics, private_token)
    app[ASYNC_KEY] = invocations
    r = app.router
    r.add_post("/async-function/{name}", submit_async)
    r.add_post("/async-function/{name}/{tail:.*}", submit_async)
    r.add_get("/system/queue", list_queue)
    r.add_delete("/system/queue", purge_queue)
    r.add_post("/system/queue/retry", retry_queue)
    return invocations
