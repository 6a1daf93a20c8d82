"""The HTTP side: OpenAI's routes, its error shape, API key auth, and streaming over SSE."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from aiohttp import hdrs, web

from .._origin import addressed_to_loopback, cross_site_reason, named_host
from ..config import is_loopback
from . import _errors as errors
from ._engine import Engine
from ._errors import OpenAIError
from ._generation import Generation
from ._metrics import METRICS, LLMMetrics, metrics_endpoint
from ._requests import (
    GenerationRequest,
    check_prompt_fits,
    parse_chat_request,
    parse_completion_request,
    requested_model,
)
from ._responses import ChunkEncoder, completion_body, error_event, model_card, new_response_id, now
from ._scheduler import Scheduler
from ._settings import LLMSettings, model_aliases
from ._structured import output_problem
from ._toolcalls import CallStart, Content, Event, ToolCallReader

log = logging.getLogger("streamfaas.llm")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SSE_HEADERS = {
    hdrs.CONTENT_TYPE: "text/event-stream; charset=utf-8",
    # A proxy in front (nginx, the gateway) must pass each chunk on at once.
    hdrs.CACHE_CONTROL: "no-cache",
    "X-Accel-Buffering": "no",
}


@dataclass
class ServerState:
    settings: LLMSettings
    model: str
    aliases: frozenset[str]
    api_key: bytes | None
    engine: Engine
    scheduler: Scheduler | None = None
    reading: int = 0  # requests whose body is being read and checked, not yet submitted
    # No API key on a loopback address: only requests addressed to a loopback name are served.
    loopback_names_only: bool = False

    def check_model(self, model: str | None) -> None:
        # No model named means the one this server serves (lenient; OpenAI would say 400).
        if model is not None and model.lower() not in self.aliases:
            raise errors.model_not_found(model)


STATE = web.AppKey("llm_state", ServerState)
REQUEST_ID = web.RequestKey("llm_request_id", str)
_GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


def request_id(request: web.Request) -> str:
    """The id this server gave the request (OpenAI's form), sent back as ``x-request-id``."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        rid = request[REQUEST_ID] = "req_" + secrets.token_hex(16)
    return rid


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, just before its headers go out: the request id, and on the
    generation routes how many more requests the server would take right now.

    OpenAI's ``x-ratelimit-*-requests`` count requests per minute; this server's limit is on
    requests at once (``parallel`` generating + ``queue_size`` waiting), so that is what they
    count here. There is no token limit, and so no ``*-tokens`` headers.
    """
    response.headers["x-request-id"] = request_id(request)
    scheduler = request.app[STATE].scheduler
    if request.path in _GENERATION_PATHS and scheduler is not None:
        response.headers["x-ratelimit-limit-requests"] = str(scheduler.capacity)
        response.headers["x-ratelimit-remaining-requests"] = str(
            max(0, scheduler.capacity - scheduler.in_flight)
        )


def error_response(error: OpenAIError) -> web.Response:
    headers = {"Retry-After": "1"} if error.http_status == 429 else None
    return web.json_response(error.to_json(), status=error.http_status, headers=headers)


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place errors become responses: always OpenAI's JSON, never a traceback."""
    try:
        return await handler(request)
    except OpenAIError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason
        if exc.status == 404:
            message = f"Unknown request URL: {request.method} {request.path}."
        elif exc.status == 405:
            message = f"Method {request.method} is not allowed on {request.path}."
        code = "unknown_url" if exc.status == 404 else None
        return error_response(OpenAIError(message, status=exc.status, code=code))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception(
            "unhandled error serving %s %s (%s)", request.method, request.path, request_id(request)
        )
        return error_response(errors.internal_error())


@web.middleware
async def from_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What a web page in the user's browser may not do here. Another origin's page may not make
    the model generate (its ``no-cors`` POST needs no preflight, and it runs the CPU for as long
    as a request may). Without an API key on loopback, the API answers only requests addressed
    to a loopback name: a DNS-rebinding page reaches it under its own name, same-origin."""
    if request.path.startswith("/v1/"):
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            reason = cross_site_reason(request, "the model server")
            if reason is not None:
                raise OpenAIError(reason + ".", status=403, code="cross_site_request")
        if request.app[STATE].loopback_names_only and not addressed_to_loopback(request):
            raise OpenAIError(
                f"Refused a request addressed to {named_host(request)!r}: without an API key this server answers only "
                "requests to localhost or a loopback address.", status=403, code="cross_site_request")
    return await handler(request)


@web.middleware
async def api_key_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = request.app[STATE].api_key
    if key is not None and request.path.startswith("/v1/"):
        header = request.headers.get(hdrs.AUTHORIZATION, "")
        scheme, _, given = header.partition(" ")
        if not header:
            raise errors.missing_api_key()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key):
            raise errors.invalid_api_key()
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.scheduler is None:
        return web.json_response({"status": "loading"}, status=503)
    return web.json_response({"status": "ok", "model": state.model})


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {"object": "list", "data": [model_card(state.model, state.engine.loaded_at)]}
    )


async def get_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.check_model(request.match_info["model"])
    return web.json_response(model_card(state.model, state.engine.loaded_at))


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = _scheduler(state).stats()
    body["model"] = state.model
    body["slots_busy"] = await asyncio.to_thread(state.engine.busy_slots)
    return web.json_response(body)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, parse_chat_request)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, parse_completion_request)


async def _generate(
    request: web.Request, parse: Callable[[object, Any], GenerationRequest]
) -> web.StreamResponse:
    state = request.app[STATE]
    scheduler = _scheduler(state)
    # Admitted before its body is read: bodies being read and checked count against the
    # server's capacity too (16 concurrent 8 MiB bodies took it to 2.2 GiB and stalled it).
    scheduler.check_room(state.reading)
    state.reading += 1
    checking: asyncio.Future[GenerationRequest] | None = None
    try:
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                raw = await request.read()
        except TimeoutError:
            raise OpenAIError(f"The request body did not arrive within {BODY_TIMEOUT:g}s.", status=408,
                              type="invalid_request_error", code="request_timeout") from None

        def check() -> GenerationRequest:
            # In a thread: parsing 8 MiB of JSON, and compiling a request's JSON schemas into
            # grammars, take a while; the loop serves every other stream meanwhile.
            try:
                body = _loads(raw)
                state.check_model(requested_model(body))
                parsed = parse(body, state.engine.tokenizer)
            except RecursionError:  # JSON, or a schema, nested past what Python recurses into
                raise OpenAIError("The request is nested too deeply.") from None
            check_prompt_fits(parsed, state.settings.ctx_size, state.engine.longest_token)
            return parsed

        checking = asyncio.ensure_future(asyncio.to_thread(check))
        # The place is given back when the check ends, not when a client that left does: else
        # send-and-drop would pile checks up in the threads without bound.
        checking.add_done_callback(lambda _: _left(state))
        parsed = await asyncio.shield(checking)
    finally:
        if checking is None:
            state.reading -= 1
    generation = await scheduler.submit(parsed)
    try:
        if parsed.stream:
            return await _stream(request, state, generation)
        return await _whole(state, generation)
    finally:
        # A no-op once the generation ended; after a disconnect (the handler is cancelled, or a
        # write failed) it stops the model within one token.
        generation.cancel()


async def _whole(state: ServerState, generation: Generation) -> web.Response:
    parts: list[str] = []
    while (text := await generation.next_text()) is not None:
        parts.append(text)
    if generation.error is not None:
        raise generation.error
    request = generation.request
    text, finish_reason = "".join(parts), generation.finish_reason
    tool_call = None
    reader = None
    if request.tool_use is not None:
        reader = ToolCallReader(request.tool_use)
        reader.feed(text)
        reader.finish()
        if reader.is_call:
            tool_call = (reader.call_id, reader.name, reader.arguments)
            finish_reason = _call_finish_reason(finish_reason)
    unenforced = await _unenforced(state, generation, text, reader)
    if unenforced is not None:
        raise unenforced
    body = completion_body(
        request.kind,
        new_response_id(request.kind),
        now(),
        state.model,
        text,
        finish_reason,
        generation.usage,
        tool_call,
    )
    return web.json_response(body)


async def _unenforced(
    state: ServerState, generation: Generation, text: str, reader: ToolCallReader | None
) -> OpenAIError | None:
    """The error to answer with when a constrained answer does not match its grammar.

    A grammar that compiled, and whose first tokens matched when the request was checked, can
    still hit one of llguidance's limits further on; llama.cpp then logs it and generates
    unconstrained text, which must not be passed off as an answer that matches the schema."""
    request = generation.request
    param = request.constraint_param
    if param is None:
        return None
    reason = generation.finish_reason
    problem = None
    tokenizer = state.engine.tokenizer
    if tokenizer is not None:
        # Whole only when the model stopped by itself: max_tokens or a stop sequence cut it.
        complete = reason == "stop" and "stop" not in request.engine_body
        problem = await asyncio.to_thread(
            output_problem, request.engine_body["grammar"], tokenizer, text, complete
        )
    tool_use = request.tool_use
    if problem is None and tool_use is not None and tool_use.required and reason != "length":
        if reader is None or not reader.is_call:
            problem = "the model answered without calling a tool"
    if problem is None:
        return None
    log.warning("answer to %s does not match its grammar: %s", param, problem)
    return errors.invalid_value(
        param, f"this server could not enforce the schema while generating: {problem}."
    )


def _call_finish_reason(engine_reason: str | None) -> str:
    # The grammar let the model stop only once the call was complete; "length" stays.
    return "length" if engine_reason == "length" else "tool_calls"


async def _stream(
    request: web.Request, state: ServerState, generation: Generation
) -> web.StreamResponse:
    # Wait for the first token before sending headers: a request llama.cpp refuses (a prompt
    # longer than the context) still gets its error status instead of a 200 stream.
    first = await generation.next_text()
    if first is None and generation.error is not None:
        raise generation.error
    parsed = generation.request
    encoder = ChunkEncoder(
        parsed.kind,
        new_response_id(parsed.kind),
        now(),
        state.model,
        include_usage=parsed.include_usage,
    )
    reader = ToolCallReader(parsed.tool_use) if parsed.tool_use is not None else None
    encode = encoder.text if reader is None else partial(_encode_events, encoder, reader)
    if parsed.constraint_param is not None:  # kept, to check against the grammar at the end
        texts: list[str] = []
        encode = partial(_kept, texts, encode)
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    pending = encoder.opening()
    ended = first is None
    if first is not None:
        pending += encode(first)
    while not ended:
        if pending:
            await response.write(pending)
        text = await generation.next_text()
        if text is None:
            pending = b""
            break
        pending = encode(text)
        # Texts that piled up while the last write waited on a slow reader go out together.
        for more in generation.take_ready():
            if more is None:
                ended = True
                break
            pending += encode(more)
    finish_reason = generation.finish_reason
    if reader is not None:
        pending += _event_bytes(encoder, reader.finish())
        if reader.is_call:
            finish_reason = _call_finish_reason(finish_reason)
    error = generation.error
    if error is None and parsed.constraint_param is not None:
        error = await _unenforced(state, generation, "".join(texts), reader)
    if error is not None:
        pending += error_event(error)
    else:
        pending += encoder.finish(finish_reason, generation.usage)
    await response.write(pending)
    await response.write_eof()
    return response


def _kept(texts: list[str], encode: Callable[[str], bytes], text: str) -> bytes:
    texts.append(text)
    return encode(text)


def _encode_events(encoder: ChunkEncoder, reader: ToolCallReader, text: str) -> bytes:
    return _event_bytes(encoder, reader.feed(text))


def _event_bytes(encoder: ChunkEncoder, events: list[Event]) -> bytes:
    out = b""
    for event in events:
        if isinstance(event, Content):
            out += encoder.text(event.text)
        elif isinstance(event, CallStart):
            out += encoder.call_start(event.call_id, event.name)
        else:
            out += encoder.call_arguments(event.text)
    return out


BODY_TIMEOUT = 30.0  # a request's body must arrive within this: a body being read holds a place


def _left(state: ServerState) -> None:
    state.reading -= 1


def _loads(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError
        raise errors.invalid_json() from None


def _scheduler(state: ServerState) -> Scheduler:
    if state.scheduler is None:
        raise OpenAIError("The model is still loading.", status=503, type="server_error")
    return state.scheduler


def create_app(settings: LLMSettings) -> web.Application:
    """The aiohttp application. The model loads when the app starts (``AppRunner.setup``) and
    is released when it stops. Serve it with ``handler_cancellation=True`` so that a client's
    disconnect cancels its handler at once (``serve`` does)."""
    model_path = settings.resolved_model_path()
    api_key = settings.read_api_key()
    model = settings.resolved_model_name()
    metrics = LLMMetrics(model, lambda: state.scheduler)
    state = ServerState(
        settings=settings,
        model=model,
        aliases=model_aliases(settings, model_path),
        api_key=api_key.encode() if api_key is not None else None,
        engine=Engine(settings, model_path, metrics),
        loopback_names_only=api_key is None and is_loopback(settings.host),
    )
    app = web.Application(
        middlewares=[openai_errors, from_pages, api_key_auth], client_max_size=settings.max_body_bytes
    )
    app[STATE] = state
    app[METRICS] = metrics
    app.on_response_prepare.append(add_headers)
    app.cleanup_ctx.append(_model_lifetime)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_get("/v1/stats", stats)
    app.router.add_get("/metrics", metrics_endpoint)  # outside /v1: no API key, as vLLM's
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    return app


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _signal_handlers() -> dict[signal.Signals, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in _SIGNALS}


def _restore_signal_handlers(saved: dict[signal.Signals, Any]) -> None:
    for sig, handler in saved.items():
        if handler is not None:
            signal.signal(sig, handler)


async def stop_generations(app: web.Application) -> None:
    """Stop every generation (each stream ends with an error event) and refuse new ones, so
    that a shutdown does not wait for long completions to finish."""
    scheduler = app[STATE].scheduler
    if scheduler is not None:
        await scheduler.close()


async def _model_lifetime(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    settings = state.settings
    saved = _signal_handlers()
    await asyncio.to_thread(state.engine.load)
    # llama.cpp installs its own SIGINT/SIGTERM handlers as it starts (they would stop the
    # model, not this process); put back what the process had.
    _restore_signal_handlers(saved)
    state.scheduler = Scheduler(
        state.engine, parallel=settings.parallel, queue_size=settings.queue_size
    )
    try:
        yield
    finally:
        scheduler, state.scheduler = state.scheduler, None
        await scheduler.close()
        await asyncio.to_thread(state.engine.close)
