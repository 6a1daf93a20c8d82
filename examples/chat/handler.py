"""Streams a chat completion from any OpenAI-compatible endpoint as Server-Sent Events.

Request: POST a plain-text prompt, or JSON `{"messages": [...]}` / `{"prompt": "..."}` (either
may add `"max_tokens"`, at most MAX_TOKENS); or GET `?prompt=...` (so that a browser's
EventSource can call the function directly).

Response: each delta goes out as `data: {"content": "..."}` (JSON keeps leading spaces and
newlines), and the stream ends with `event: done` and `{"finish_reason": ..., "usage": ...}`
(`"length"` when max_tokens cut the answer). Nothing is sent until the model's first token, so
a request the model refuses gets a real HTTP error with `{"error": {...}}` JSON: the model's own
status where the caller can act on it (400, 413, 422, 429, 503), 502 when the function's set-up
is at fault (its key, base URL or model name) or the model cannot be reached, 504 when it does
not answer. A failure after the first token becomes `event: error`.

The API key is read from a secret file, never from the environment or the code. When the client
goes away, the upstream request is closed, so the model stops generating (and billing).
"""

import json
import os
import re
import urllib.parse

import openai
from flask import Response, request

SECRETS_DIR = os.environ.get("STREAMFAAS_SECRETS_DIR", "/var/openfaas/secrets")
BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
# The endpoint as callers are told of it: no user, password or query (a token may be in either).
_BASE = urllib.parse.urlsplit(BASE_URL)
SHOWN_URL = _BASE._replace(netloc=_BASE.netloc.rpartition("@")[2], query="", fragment="").geturl()
MODEL = os.environ.get("OPENAI_MODEL", "smollm2-135m-instruct")
KEY_SECRET = os.environ.get("OPENAI_API_KEY_SECRET", "openai-api-key")
MAX_TOKENS = int(os.environ.get("MAX_TOKENS", "256"))
SYSTEM_PROMPT = os.environ.get("SYSTEM_PROMPT", "You are a helpful assistant. Answer briefly.")
# Sampling: unset leaves the endpoint's default; 0 asks for the same answer every time.
TEMPERATURE = os.environ.get("TEMPERATURE", "").strip()
SAMPLING = {"temperature": float(TEMPERATURE)} if TEMPERATURE else {}

# Model refusals the caller can act on keep their status. Any other (401/403: the function's
# key; 404: its base URL or model name; 5xx) is the function's or the model's fault: 502.
CALLER_STATUSES = frozenset({400, 413, 422, 429, 503})
# The endpoint's answer to the function's own key is not the caller's business: OpenAI's 401
# quotes part of the key ("Incorrect API key provided: sk-…abcd").
KEY_REFUSED = frozenset({401})
MESSAGE_INDEX = re.compile(r"messages\[(\d+)\]")
USAGE = 'send a prompt: POST text, POST JSON {"messages": [...]} or {"prompt": "..."}, or GET ?prompt=...'


class BadRequest(Exception):
    """The caller's request is malformed: 400 with this one-line reason."""


class ModelRefused(Exception):
    """The model failed before its first token: an HTTP error to the caller."""

    def __init__(self, status, error, retry_after=None):
        super().__init__(error["message"])
        self.status = status
        self.error = error
        self.retry_after = retry_after


def read_api_key():
    """The key from the function's secret; local model servers need none."""
    try:
        with open(os.path.join(SECRETS_DIR, KEY_SECRET)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return "no-key-needed"


_clients = {}


def client_for(api_key):
    """One client per key for the life of the process: building one costs ~18 ms (TLS
    context, connection pool), which would land on every answer's first token. A rotated
    secret simply gets a new client."""
    client = _clients.get(api_key)
    if client is None:
        client = _clients[api_key] = openai.OpenAI(
            base_url=BASE_URL, api_key=api_key, max_retries=0, timeout=60
        )
    return client


# ---- the request ------------------------------------------------------------------------------


def json_type(value):
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def parse_request(method, body, args, mimetype):
    """GET or POST: (the caller's messages, max_tokens), or BadRequest. Roles and content parts are left to
    the endpoint, which knows what it supports (its refusal names the caller's own index)."""
    if method == "GET":
        prompt = args.get("prompt", "")
        if not prompt.strip():
            raise BadRequest(USAGE)
        return [{"role": "user", "content": prompt}], parse_max_tokens(
            args.get("max_tokens"), "max_tokens", query=True
        )
    text = body.strip()
    if not text:
        raise BadRequest(USAGE)
    is_json = mimetype == "application/json" or mimetype.endswith("+json")
    if is_json or text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            if is_json:
                raise BadRequest(f"the body is not valid JSON: {exc}") from None
            data = None  # plain text that happens to start with "{"
        if data is not None:
            if not isinstance(data, dict):
                raise BadRequest(
                    f"the JSON body must be an object, not {json_type(data)}: " + USAGE
                )
            return parse_json_body(data)
    return [{"role": "user", "content": text}], MAX_TOKENS


def parse_json_body(data):
    max_tokens = parse_max_tokens(data.get("max_tokens"), "max_tokens")
    if "messages" in data:
        return parse_messages(data["messages"]), max_tokens
    prompt = data.get("prompt")
    if prompt is None:
        raise BadRequest(USAGE)
    if not isinstance(prompt, str):
        raise BadRequest(f"prompt must be a string, not {json_type(prompt)}")
    if not prompt.strip():
        raise BadRequest("prompt is empty")
    return [{"role": "user", "content": prompt}], max_tokens


def parse_messages(messages):
    if not isinstance(messages, list):
        raise BadRequest(f"messages must be a list, not {json_type(messages)}")
    if not messages:
        raise BadRequest("messages is empty: send at least one message")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(
                f"messages[{i}] must be an object with role and content, not {json_type(message)}"
            )
        role = message.get("role")
        if not isinstance(role, str):
            raise BadRequest(f"messages[{i}].role must be a string, not {json_type(role)}")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(
                f"messages[{i}].content must be a string or a list of content parts, not {json_type(content)}"
            )
    return messages


def parse_max_tokens(value, name, query=False):
    if value is None:
        return MAX_TOKENS
    if query:
        try:
            value = int(value)
        except ValueError:
            raise BadRequest(f"{name} must be a whole number") from None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{name} must be a whole number, not {json_type(value)}")
    if not 1 <= value <= MAX_TOKENS:
        raise BadRequest(f"{name} must be between 1 and {MAX_TOKENS}")
    return value


def with_system_prompt(messages):
    """(what the model gets, how many messages were put in front of the caller's). A caller
    who sends its own system message keeps it instead of ours."""
    if SYSTEM_PROMPT and messages[0].get("role") not in ("system", "developer"):
        return [{"role": "system", "content": SYSTEM_PROMPT}, *messages], 1
    return messages, 0


# ---- the model's errors -----------------------------------------------------------------------


def caller_indexes(text, offset):
    """The model counts our system prompt as messages[0]; the caller does not."""
    if not text or not offset:
        return text

    def shift(match):
        index = int(match.group(1)) - offset
        return f"messages[{index}]" if index >= 0 else "the function's SYSTEM_PROMPT"

    return MESSAGE_INDEX.sub(shift, text)


def error_body(exc):
    """The model's `{"error": {...}}` (SDK versions differ on whether `body` is wrapped)."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    return body if isinstance(body, dict) else {}


def model_error(exc, offset):
    """What the caller is told about an error from the OpenAI SDK: (status, error dict)."""
    if isinstance(exc, openai.APITimeoutError):
        return 504, {
            "message": f"the model at {SHOWN_URL} did not answer in time",
            "type": "timeout",
        }
    if isinstance(exc, openai.APIConnectionError):
        return 502, {"message": f"cannot reach the model at {SHOWN_URL}", "type": "connection_error"}
    if isinstance(exc, openai.APIStatusError) and exc.status_code in KEY_REFUSED:
        return 502, {"message": f"the model endpoint refused this function's API key ({exc.status_code})",
                     "type": "upstream_auth_error", "status": exc.status_code}
    body = error_body(exc)
    detail = body.get("message") if isinstance(body.get("message"), str) else exc.message
    error = {
        "message": caller_indexes(detail, offset),
        "type": body.get("type"),
        "param": caller_indexes(body.get("param"), offset),
        "code": body.get("code"),
    }
    if isinstance(exc, openai.APIStatusError):
        error["status"] = exc.status_code
        error["message"] = f"the model endpoint answered {exc.status_code}: {error['message']}"
        return (exc.status_code if exc.status_code in CALLER_STATUSES else 502), error
    error["message"] = f"the model stream failed: {error['message']}"
    return 502, error


# ---- the response -----------------------------------------------------------------------------


def sse(data, event=None):
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def json_error(status, error, headers=None):
    return (
        json.dumps({"error": error}) + "\n",
        status,
        {"Content-Type": "application/json", **(headers or {})},
    )


def open_stream(client, messages, max_tokens, offset):
    """Start the completion and read up to its first token, so that a refusal is still an HTTP
    status. Returns (stream, the chunks read so far)."""
    stream = None
    try:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=messages,
            stream=True,
            max_tokens=max_tokens,
            stream_options={"include_usage": True},
            **SAMPLING,
        )
        held = []
        # next(), not a for loop: the rest of the stream is read later, from where this stops.
        while (chunk := next(stream, None)) is not None:
            held.append(chunk)
            if any(c.delta.content or c.finish_reason for c in chunk.choices):
                break
        return stream, held
    except openai.APIError as exc:
        if stream is not None:
            stream.close()
        status, error = model_error(exc, offset)
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        raise ModelRefused(status, error, retry_after) from None


def handle(req):
    if request.method not in ("GET", "POST"):
        error = {
            "message": f"{request.method} is not supported: " + USAGE,
            "type": "invalid_request_error",
        }
        return json_error(405, error, {"Allow": "GET, POST"})
    try:
        caller_messages, max_tokens = parse_request(
            request.method, req, request.args, request.mimetype
        )
    except BadRequest as exc:
        return json_error(400, {"message": str(exc), "type": "invalid_request_error"})
    messages, offset = with_system_prompt(caller_messages)
    try:
        stream, held = open_stream(client_for(read_api_key()), messages, max_tokens, offset)
    except ModelRefused as exc:
        return json_error(
            exc.status, exc.error, {"Retry-After": exc.retry_after} if exc.retry_after else None
        )

    def events():
        finish_reason, usage = None, None
        try:
            for chunk in _chain(held, stream):
                if chunk.usage is not None:
                    usage = chunk.usage.model_dump(exclude_none=True)
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield sse({"content": choice.delta.content})
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
            yield sse({"finish_reason": finish_reason, "usage": usage}, "done")
        except openai.APIError as exc:
            _, error = model_error(exc, offset)
            yield sse({"error": error}, "error")
        finally:
            # Runs on normal end and when the client disconnects (GeneratorExit): closing
            # the stream closes the HTTP request, and the model server stops generating.
            stream.close()

    response = Response(events(), mimetype="text/event-stream")
    # A client gone before the first write closes a generator that never started, so its
    # `finally` would not run: close the upstream from the response's own close as well.
    response.call_on_close(stream.close)
    return response


def _chain(held, stream):
    yield from held
    yield from stream
