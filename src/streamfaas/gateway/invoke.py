"""``/function/{name}[/{path}]``: route a request to a ready replica and stream the answer back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from .._origin import cross_site_reason
from ..config import BodyLimits, ResumeSettings, SseSettings
from ..errors import (
    NamespaceNotFound,
    PayloadTooLarge,
    StreamfaasError,
    Unauthorized,
)
from ..provider.base import Endpoint, Provider
from ..proxy import (
    StreamLimits,
    error_response,
    forward_headers,
    is_event_stream,
    open_upstream,
    read_capped,
    stream_response,
)
from ..upstream import UpstreamUnreachable
from .auth import check_function_access
from .metrics_streams import StreamTally
from .resume import relay, resume_or_none, start_journalled
from .state import GatewayState, state_of

_NO_LIMITS = StreamLimits()
# Functions share the gateway's origin with /system and /ui: a page a function serves (its own,
# or input it reflects) must not act with an admin's browser credentials there. A sandboxed
# document gets an opaque origin; its scripts still run, but never as the gateway's origin.
# It replaces any policy the function set (a function cannot lift it).
FUNCTION_CSP = {"Content-Security-Policy": "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"}
CONNECT_ATTEMPTS = 8


def split_name(raw: str) -> tuple[str, str | None]:
    """``(NAME, NAMESPACE)`` from ``NAME.NAMESPACE``, as the Go SDK (so faas-cli and the
    certifier) names a function in a path, or ``(NAME, None)`` (the default namespace) from a
    bare ``NAME``. A function name holds no ".", so the first one divides the two."""
    name, dot, namespace = raw.partition(".")
    return name, namespace if dot else None


def check_namespace(provider: Provider, name: str, namespace: str | None) -> str:
    """``namespace``, or "" for the provider's default; NamespaceNotFound where it serves none."""
    if namespace is None or namespace == provider.default_namespace:
        return ""
    if namespace not in provider.namespaces():
        known = provider.namespaces()
        which = f"the only namespace is {known[0]!r}" if len(known) == 1 else "the namespaces are " + ", ".join(map(repr, known))
        raise NamespaceNotFound(f"function {name!r} not found in namespace {namespace!r}: {which}")
    return namespace


def qualified_name(name: str, namespace: str) -> str:
    """How metrics and queued jobs name a function: NAME in the default namespace, else NAME.NAMESPACE."""
    return f"{name}.{namespace}" if namespace else name


def _call_headers(request: web.Request) -> tuple[str, str]:
    # A caller's own id is kept if it could be one (as on /async-function): at most 200
    # printable characters; anything else is replaced, not passed on to the function's logs.
    call_id = request.headers.get("X-Call-Id")
    if not call_id or len(call_id) > 200 or not call_id.isprintable():
        call_id = str(uuid.uuid4())
    return call_id, str(time.time_ns())


async def invoke_function(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    await state.admission.enter()
    name, given = split_name(request.match_info["name"])
    call_id, start_time = _call_headers(request)
    reply_headers = CIMultiDict({"X-Call-Id": call_id, "X-Start-Time": start_time, **FUNCTION_CSP})
    namespace = "" if given is None or given == state.provider.default_namespace else given
    known = given != "" and state.provider.has(name, namespace)  # "NAME." names no namespace
    metric_name = qualified_name(name, namespace)
    if known:
        state.metrics.started_of(metric_name).inc()
    began = time.perf_counter()
    code = 499  # the client went away before an answer (nginx's convention)
    try:
        namespace = check_namespace(state.provider, name, given)
        # Only a deployed function gets metric series: one per name a caller makes up would
        # grow the gateway's memory and /metrics without bound (the request is a 404 anyway).
        tally = state.metrics.streams.observer(metric_name, began) if known else None
        # Two steps, so that a stream's whole life holds only the small second frame.
        prepared = await _prepare(state, request, name, namespace, call_id, start_time, reply_headers, tally, metric_name)
        if isinstance(prepared, web.StreamResponse):
            resp = prepared  # resumed from the journal
        else:
            forward = _forward(state, request, name, namespace, reply_headers, tally, metric_name, *prepared)
            del prepared  # its headers are sent once, then dropped (_forward): not kept here
            resp = await forward
        code = resp.status
    except StreamfaasError as exc:
        resp = error_response(str(exc), exc.http_status)
        resp.headers.update(reply_headers)
        if isinstance(exc, Unauthorized):
            resp.headers["WWW-Authenticate"] = 'Bearer realm="streamfaas"'
        code = exc.http_status
    finally:
        if known:
            status = str(code)
            state.metrics.invocations_of(metric_name, status).inc()
            state.metrics.seconds_of(metric_name, status).observe(time.perf_counter() - began)
    return resp


# The headers and body to send upstream, the path, and the stream's settings.
Prepared = tuple[CIMultiDict[str], bytes | aiohttp.StreamReader | None, str, SseSettings, ResumeSettings | None]


async def _prepare(
    state: GatewayState,
    request: web.Request,
    name: str,
    namespace: str,
    call_id: str,
    start_time: str,
    reply_headers: CIMultiDict[str],
    tally: StreamTally | None,
    function: str,
) -> Prepared | web.StreamResponse:
    """What goes upstream (headers, body, path) and the stream's settings; or the answer
    itself, where a resumable stream is resumed from the journal."""
    provider = state.provider
    record = provider.record(name, namespace)  # 404 for an unknown function, before anything else
    headers = forward_headers(request.headers)
    d = record.deployment
    header = request.headers.get(hdrs.AUTHORIZATION)
    if check_function_access(name, d.labels, d.annotations, header, state.credentials,
                             lambda: provider.function_token(name, namespace), lambda: cross_site_reason(request)):
        headers.popall(hdrs.AUTHORIZATION, None)  # the platform's credential is not the function's business
    elif state.credentials is not None and state.credentials.anywhere_in(headers.getall(hdrs.AUTHORIZATION, [])):
        headers.popall(hdrs.AUTHORIZATION, None)  # never hand the admin password to a function
    sse = SseSettings.from_env(d.envVars)
    resume = ResumeSettings.from_env(d.envVars)
    last_event_id = request.headers.get("Last-Event-ID")
    if resume is not None and last_event_id:
        resumed = await resume_or_none(
            state.journal, request, function, last_event_id, resume, extra_headers=reply_headers, sse=sse,
            observer=tally, count=lambda result: state.metrics.streams.resumes.labels(function_name=function, result=result).inc(),
        )
        if resumed is not None:
            return resumed
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Host"] = request.host
    headers["X-Call-Id"] = call_id
    headers["X-Start-Time"] = start_time
    body: bytes | aiohttp.StreamReader | None = None
    limits = record.body_limits
    if limits.max_body and (request.content_length or 0) > limits.max_body:
        raise PayloadTooLarge(_too_large(name, limits))  # before reading any of it, buffered or streamed
    if record.buffer_body:
        body = await _read_body(request, name, limits)
    elif request.body_exists:
        body = request.content
        if request.content_length is not None:
            headers[hdrs.CONTENT_LENGTH] = str(request.content_length)
    # The path and query as the client encoded them, as OpenFaaS forwards them: decoded, an
    # escaped "?" or "/" would change what the function sees.
    parts = request.rel_url.raw_path.split("/", 3)  # "", "function", NAME[, TAIL]
    path = "/" + (parts[3] if len(parts) > 3 else "")
    if request.rel_url.raw_query_string:
        path += "?" + request.rel_url.raw_query_string
    return headers, body, path, sse, resume


async def _forward(
    state: GatewayState,
    request: web.Request,
    name: str,
    namespace: str,
    reply_headers: CIMultiDict[str],
    tally: StreamTally | None,
    function: str,
    headers: CIMultiDict[str],
    body: bytes | aiohttp.StreamReader | None,
    path: str,
    sse: SseSettings,
    resume: ResumeSettings | None,
) -> web.StreamResponse:
    """Send the request to a replica (another one if it cannot be reached) and stream the
    answer back: this frame lives as long as the stream, so it holds little."""
    provider = state.provider
    # A streamed body is held to the function's read_timeout between its pieces.
    read_timeout = provider.record(name, namespace).body_limits.read_timeout if isinstance(body, aiohttp.StreamReader) else 0.0
    for attempt in range(CONNECT_ATTEMPTS):
        replica = await provider.acquire(name, namespace)
        reply_headers["X-Served-By"] = f"{name}[{replica.id}]"
        replica.inflight += 1
        journalled = False
        try:
            try:
                upstream = await open_upstream(
                    replica.pool, request.method, replica.url, path, headers=headers, body=body,
                    timeout=state.config.upstream_timeout, body_idle=read_timeout,
                )
            except UpstreamUnreachable:
                # Nothing was sent: the replica is going away (crash, scale-down, update), so wait
                # for its replacement or another replica rather than failing the request.
                if attempt == CONNECT_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.02 * 2**attempt)
                continue
            provider.record(name, namespace).invocations += 1
            del headers  # sent; not kept alive for the stream's whole life
            if any(h in upstream.headers for h in _CONFINED_HEADERS):
                upstream.headers = confined_to_function(upstream.headers, f"/function/{request.match_info['name']}")
            if resume is not None and is_event_stream(upstream.headers.get(hdrs.CONTENT_TYPE)):
                # The function's side now belongs to the journal's pump, and so does the
                # replica's count of it: the function runs on if this client goes away.
                journalled = True
                stream = start_journalled(state.journal, function, upstream, resume, sse, _releaser(replica))
                return await relay(request, stream, 0, extra_headers=reply_headers, sse=sse, observer=tally)
            return await stream_response(
                request, upstream, limits=_NO_LIMITS, extra_headers=reply_headers, sse_settings=sse, observer=tally,
            )
        finally:
            if not journalled:
                replica.inflight -= 1
    raise AssertionError("unreachable")


# Response headers that set a policy for the whole origin (or its host and subdomains), which the
# UI and the admin API share with every function: ``Clear-Site-Data`` wipes the origin's storage;
# ``NEL`` with ``Report-To``/``Reporting-Endpoints`` would have the admin's browser report every
# later request to the origin (``/ui/``, ``/system/logs?name=…``) to the function's endpoint;
# HSTS with ``includeSubDomains`` and ``Alt-Svc`` pin the host's siblings and its transport;
# ``Accept-CH``/``Critical-CH`` change what the browser sends everywhere on the origin;
# ``Service-Worker-Allowed`` would widen a worker's scope beyond ``/function/NAME``.
_ORIGIN_WIDE = frozenset({
    "clear-site-data", "nel", "report-to", "reporting-endpoints", "strict-transport-security", "alt-svc",
    "accept-ch", "critical-ch", "origin-agent-cluster", "service-worker-allowed",
})
_CONFINED_HEADERS = (hdrs.SET_COOKIE, *sorted(_ORIGIN_WIDE))


def confined_to_function(headers: CIMultiDictProxy[str], prefix: str) -> CIMultiDictProxy[str]:
    """A function's response headers, kept to its own URLs on the gateway's origin, which the UI
    and the admin API share with every function: each cookie it sets gets ``Path=`` its own
    ``/function/NAME`` (unless already below it) and no ``Domain``, and the headers that set a
    policy for the whole origin (``_ORIGIN_WIDE``) are dropped. Before, three 4 KiB cookies at
    ``Path=/`` made every later browser request to the gateway a 400 (a Cookie header over
    aiohttp's limit)."""
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        if key.lower() in _ORIGIN_WIDE:
            continue
        if key.lower() == "set-cookie":
            pair, *attributes = value.split(";")
            kept = []
            path = ""
            for attribute in attributes:
                field = attribute.split("=", 1)[0].strip().lower()
                if field == "path":
                    path = attribute.split("=", 1)[1].strip() if "=" in attribute else ""
                elif field != "domain":
                    kept.append(attribute)
            if not (path == prefix or path.startswith(prefix + "/")):
                path = prefix
            value = ";".join([pair, *kept, f" Path={path}"])
        out.add(key, value)
    return CIMultiDictProxy(out)


def _releaser(replica: Endpoint) -> Callable[[], None]:
    def release() -> None:
        replica.inflight -= 1

    return release


async def _read_body(request: web.Request, name: str, limits: BodyLimits) -> bytes:
    """A buffered body, read as it comes and given up on past ``max_body`` or ``read_timeout``."""
    return await read_capped(request, limits.max_body, _too_large(name, limits),
                             read_timeout=limits.read_timeout, too_slow=too_slow(name, limits.read_timeout))


def too_slow(name: str, read_timeout: float) -> str:
    return f"request body not received within {read_timeout:g}s ({name}'s read_timeout)"


def _too_large(name: str, limits: BodyLimits) -> str:
    return f"request body is larger than {name}'s max_body of {limits.max_body} bytes"
