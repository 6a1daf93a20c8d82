"""Streams a chat completion from any OpenAI-compatible endpoint as Server-Sent Events.

Each delta goes out as `data: {"content": "..."}` (JSON keeps leading spaces and newlines), the
stream ends with `event: done`, and a failure becomes `event: error`. The API key is read from
a secret file, never from the environment or the code. When the client goes away, the upstream
request is closed, so the model stops generating (and billing).
"""

import json
import os

import openai
from flask import Response

SECRETS_DIR = os.environ.get("STREAMFAAS_SECRETS_DIR", "/var/openfaas/secrets")
BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
MODEL = os.environ.get("OPENAI_MODEL", "smollm2-135m-instruct")
KEY_SECRET = os.environ.get("OPENAI_API_KEY_SECRET", "openai-api-key")
MAX_TOKENS = int(os.environ.get("MAX_TOKENS", "256"))
SYSTEM_PROMPT = os.environ.get("SYSTEM_PROMPT", "You are a helpful assistant. Answer briefly.")
# Sampling: unset leaves the endpoint's default; 0 asks for the same answer every time.
TEMPERATURE = os.environ.get("TEMPERATURE", "").strip()
SAMPLING = {"temperature": float(TEMPERATURE)} if TEMPERATURE else {}


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
        client = _clients[api_key] = openai.OpenAI(base_url=BASE_URL, api_key=api_key, max_retries=0, timeout=60)
    return client


def parse_messages(req):
    """The conversation: plain text is one user message; JSON may carry `messages`."""
    text = req.strip()
    if text.startswith("{"):
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("messages"), list) and body["messages"]:
            return [{"role": "system", "content": SYSTEM_PROMPT}, *body["messages"]]
        if isinstance(body, dict) and isinstance(body.get("prompt"), str):
            text = body["prompt"]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]


def sse(data, event=None):
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def handle(req):
    messages = parse_messages(req)
    if not messages[-1]["content"]:
        return sse({"error": {"message": "send a prompt in the request body"}}, "error"), 400, {
            "Content-Type": "text/event-stream"
        }
    client = client_for(read_api_key())

    def events():
        stream = None
        try:
            stream = client.chat.completions.create(
                model=MODEL, messages=messages, stream=True, max_tokens=MAX_TOKENS, **SAMPLING
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield sse({"content": chunk.choices[0].delta.content})
            yield sse({}, "done")
        except openai.APIConnectionError:
            yield sse({"error": {"message": f"cannot reach the model at {BASE_URL}"}}, "error")
        except openai.APIStatusError as exc:
            message = f"the model endpoint answered {exc.status_code}: {exc.message}"
            yield sse({"error": {"message": message, "status": exc.status_code}}, "error")
        except openai.APIError as exc:
            yield sse({"error": {"message": f"the model stream failed: {exc.message}"}}, "error")
        finally:
            # Runs on normal end and when the client disconnects (GeneratorExit): closing
            # the stream closes the HTTP request, and the model server stops generating.
            if stream is not None:
                stream.close()

    return Response(events(), mimetype="text/event-stream")
