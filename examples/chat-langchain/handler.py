"""The chat function again, with LangChain's ChatOpenAI: same requests, same SSE events, same
errors, same secret file as examples/chat.

POST a plain-text prompt, or JSON `{"messages": [...]}` / `{"prompt": "..."}` (either may add
`"max_tokens"`, at most MAX_TOKENS), or GET `?prompt=...`. Deltas go out as
`data: {"content": "..."}`, the end as `event: done` with `{"finish_reason", "usage"}` (usage
in OpenAI's names). Nothing is sent before the model's first token, so a refusal is an HTTP
error with `{"error": {...}}` JSON (400/413/422/429/503 kept, other model statuses 502,
unreachable 502, no answer in time 504); after it, a failure is `event: error`.

Where it differs from examples/chat: messages are LangChain messages, so a role must be
system, user or assistant, and content must be text; there is no SYSTEM_PROMPT, so the
model's error messages already count the caller's messages as the caller does.
"""

import json
import os
import urllib.parse

import openai
from flask import Response, request
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

SECRETS_DIR = os.environ.get("STREAMFAAS_SECRETS_DIR", "/var/openfaas/secrets")
BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
# The endpoint as callers are told of it: no user, password or query (a token may be in either).
_BASE = urllib.parse.urlsplit(BASE_URL)
SHOWN_URL = _BASE._replace(netloc=_BASE.netloc.rpartition("@")[2], query="", fragment="").geturl()
MODEL = os.environ.get("OPENAI_MODEL", "smollm2-135m-instruct")
KEY_SECRET = os.environ.get("OPENAI_API_KEY_SECRET", "openai-api-key")
MAX_TOKENS = int(os.environ.get("MAX_TOKENS", "256"))
ROLES = {"user": HumanMessage, "assistant": AIMessage, "system": SystemMessage}
CALLER_STATUSES = frozenset({400, 413, 422, 429, 503})
# The endpoint's answer to the function's own key is not the caller's business: OpenAI's 401
# quotes part of the key ("Incorrect API key provided: sk-…abcd").
KEY_REFUSED = frozenset({401})
USAGE = 'send a prompt: POST text, POST JSON {"messages": [...]} or {"prompt": "..."}, or GET ?prompt=...'


class BadRequest(Exception):
    """The caller's request is malformed: 400 with this one-line reason."""


def read_api_key():
    try:
        with open(os.path.join(SECRETS_DIR, KEY_SECRET)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return "no-key-needed"


_models = {}


def model_for(api_key):
    """One ChatOpenAI per key for the process's life: building one per request would add
    its client set-up to every first token."""
    llm = _models.get(api_key)
    if llm is None:
        llm = _models[api_key] = ChatOpenAI(
            base_url=BASE_URL,
            api_key=api_key,
            model=MODEL,
            max_tokens=MAX_TOKENS,
            max_retries=0,
            timeout=60,
            stream_usage=True,  # off by default for a base URL that is not OpenAI's
        )
    return llm


def parse_request(method, body, args, mimetype):
    """GET or POST: (LangChain messages, max_tokens), or BadRequest."""
    if method == "GET":
        prompt = args.get("prompt", "")
        if not prompt.strip():
            raise BadRequest(USAGE)
        return [HumanMessage(content=prompt)], max_tokens_of(args.get("max_tokens"), query=True)
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
                raise BadRequest("the JSON body must be an object: " + USAGE)
            return from_json(data)
    return [HumanMessage(content=text)], MAX_TOKENS


def from_json(data):
    max_tokens = max_tokens_of(data.get("max_tokens"))
    if "messages" not in data:
        prompt = data.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadRequest(USAGE if prompt is None else "prompt must be a non-empty string")
        return [HumanMessage(content=prompt)], max_tokens
    messages = data["messages"]
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    if not messages:
        raise BadRequest("messages is empty: send at least one message")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string")
        out.append(ROLES[role](content=content))
    return out, max_tokens


def max_tokens_of(value, query=False):
    if value is None:
        return MAX_TOKENS
    if query:
        try:
            value = int(value)
        except ValueError:
            raise BadRequest("max_tokens must be a whole number") from None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TOKENS:
        raise BadRequest(f"max_tokens must be a whole number between 1 and {MAX_TOKENS}")
    return value


def model_error(exc):
    """(status, error dict) for an error from the OpenAI SDK, which LangChain lets through."""
    if isinstance(exc, openai.APITimeoutError):
        return 504, {
            "message": f"the model at {SHOWN_URL} did not answer in time",
            "type": "timeout",
        }
    if isinstance(exc, openai.APIConnectionError):
        return 502, {"message": f"cannot reach the model at {SHOWN_URL}", "type": "connection_error"}
    if isinstance(exc, openai.APIStatusError) and exc.status_code in KEY_REFUSED:
        return 502, {"message": f"the model endpoint refused this function's API key ({exc.status_code})",
                     "status": exc.status_code}
    body = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else {}
    detail = (
        body.get("message")
        if isinstance(body, dict) and isinstance(body.get("message"), str)
        else exc.message
    )
    if isinstance(exc, openai.APIStatusError):
        error = {
            "message": f"the model endpoint answered {exc.status_code}: {detail}",
            "status": exc.status_code,
        }
        return (exc.status_code if exc.status_code in CALLER_STATUSES else 502), error
    return 502, {"message": f"the model stream failed: {detail}"}


def sse(data, event=None):
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def json_error(status, error, headers=None):
    return (
        json.dumps({"error": error}) + "\n",
        status,
        {"Content-Type": "application/json", **(headers or {})},
    )


def openai_usage(usage):
    """LangChain's usage_metadata in the OpenAI names examples/chat sends."""
    if not usage:
        return None
    return {
        "prompt_tokens": usage.get("input_tokens"),
        "completion_tokens": usage.get("output_tokens"),
        "total_tokens": usage.get("total_tokens"),
    }


def handle(req):
    if request.method not in ("GET", "POST"):
        return json_error(
            405, {"message": f"{request.method} is not supported: " + USAGE}, {"Allow": "GET, POST"}
        )
    try:
        messages, max_tokens = parse_request(request.method, req, request.args, request.mimetype)
    except BadRequest as exc:
        return json_error(400, {"message": str(exc), "type": "invalid_request_error"})
    chunks = model_for(read_api_key()).stream(messages, max_tokens=max_tokens)
    held = []
    try:
        # Up to the first token before any header goes out: a refusal is still an HTTP status.
        while (chunk := next(chunks, None)) is not None:
            held.append(chunk)
            if chunk.content or chunk.response_metadata.get("finish_reason"):
                break
    except openai.APIError as exc:
        chunks.close()
        status, error = model_error(exc)
        return json_error(status, error)

    def events():
        finish_reason, usage = None, None
        try:
            for chunk in _chain(held, chunks):
                if chunk.content:
                    yield sse({"content": chunk.content})
                finish_reason = chunk.response_metadata.get("finish_reason") or finish_reason
                usage = openai_usage(chunk.usage_metadata) or usage
            yield sse({"finish_reason": finish_reason, "usage": usage}, "done")
        except openai.APIError as exc:
            yield sse({"error": model_error(exc)[1]}, "error")
        finally:
            chunks.close()  # closes the upstream request when the client goes away

    response = Response(events(), mimetype="text/event-stream")
    # A client gone before the first write never starts events(), so its `finally` would not run.
    response.call_on_close(chunks.close)
    return response


def _chain(held, rest):
    yield from held
    yield from rest
