"""``/function/{name}[/{path}]``: route a request to a ready replica and stream the answer back."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

from ..errors import StreamfaasError, Unauthorized
from ..proxy import (
    StreamLimits,
    UpstreamUnreachable,
    error_response,
    forward_headers,
    open_upstream,
    stream_response,
)
from .auth import check_function_access
from .state import GatewayState, state_of

_NO_LIMITS = StreamLimits()
CONNECT_ATTEMPTS = 8


def _call_headers(request: web.Request) -> tuple[str, str]:
    call_id = request.headers.get("X-Call-Id") or str(uuid.uuid4())
    return call_id, str(time.time_ns())


async def invoke_function(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    name = request.match_info["name"]
    call_id, start_time = _call_headers(request)
    reply_headers = CIMultiDict({"X-Call-Id": call_id, "X-Start-Time": start_time})
    known = state.provider.has(name)
    if known:
        state.metrics.started.labels(function_name=name).inc()
    began = time.perf_counter()
    code = 499  # the client went away before an answer (nginx's convention)
    try:
        resp = await _proxy(state, request, name, call_id, start_time, reply_headers)
        code = resp.status
    except StreamfaasError as exc:
        resp = error_response(str(exc), exc.http_status)
        resp.headers.update(reply_headers)
        if isinstance(exc, Unauthorized):
            resp.headers["WWW-Authenticate"] = 'Bearer realm="streamfaas"'
        code = exc.http_status
    finally:
        if known:
            labels = {"function_name": name, "code": str(code)}
            state.metrics.invocations.labels(**labels).inc()
            state.metrics.seconds.labels(**labels).observe(time.perf_counter() - began)
    return resp


async def _proxy(
    state: GatewayState,
    request: web.Request,
    name: str,
    call_id: str,
    start_time: str,
    reply_headers: CIMultiDict[str],
) -> web.StreamResponse:
    provider = state.provider
    record = provider.record(name)  # 404 for an unknown function, before anything else
    headers = forward_headers(request.headers)
    d = record.deployment
    header = request.headers.get(hdrs.AUTHORIZATION)
    if check_function_access(name, d.labels, d.annotations, header, state.credentials, lambda: provider.function_token(name)):
        del headers[hdrs.AUTHORIZATION]  # the platform's credential is not the function's business
    elif state.credentials is not None and state.credentials.matches(headers.get(hdrs.AUTHORIZATION)):
        del headers[hdrs.AUTHORIZATION]  # never hand the admin password to a function
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Host"] = request.host
    headers["X-Call-Id"] = call_id
    headers["X-Start-Time"] = start_time
    body: bytes | aiohttp.StreamReader | None = None
    if record.buffer_body:
        body = await request.read()
    elif request.body_exists:
        body = request.content
        if request.content_length is not None:
            headers[hdrs.CONTENT_LENGTH] = str(request.content_length)
    path = "/" + request.match_info.get("tail", "")
    if request.query_string:
        path += "?" + request.query_string
    for attempt in range(CONNECT_ATTEMPTS):
        replica = await provider.acquire(name)
        reply_headers["X-Served-By"] = f"{name}[{replica.id}]"
        replica.inflight += 1
        try:
            try:
                upstream = await open_upstream(
                    state.session, request.method, replica.url + path, headers=headers, body=body,
                    timeout=state.config.upstream_timeout,
                )
            except UpstreamUnreachable:
                # Nothing was sent: the replica is going away (crash, scale-down, update), so wait
                # for its replacement or another replica rather than failing the request.
                if attempt == CONNECT_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.02 * 2**attempt)
                continue
            provider.record(name).invocations += 1
            del headers  # sent; not kept alive for the stream's whole life
            return await stream_response(request, upstream, limits=_NO_LIMITS, extra_headers=reply_headers)
        finally:
            replica.inflight -= 1
    raise AssertionError("unreachable")


def client_session() -> aiohttp.ClientSession:
    # No pool limit: every open stream holds a connection to its replica for its whole life.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        # Pass the client's headers as they are: add no Accept-Encoding, User-Agent or Content-Type.
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type", "Accept"),
    )
