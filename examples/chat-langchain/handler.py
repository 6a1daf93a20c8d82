"""The chat function again, with LangChain's ChatOpenAI: same SSE events, same secret file."""

import json
import os

from flask import Response
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

SECRETS_DIR = os.environ.get("STREAMFAAS_SECRETS_DIR", "/var/openfaas/secrets")
BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
MODEL = os.environ.get("OPENAI_MODEL", "smollm2-135m-instruct")
KEY_SECRET = os.environ.get("OPENAI_API_KEY_SECRET", "openai-api-key")
MAX_TOKENS = int(os.environ.get("MAX_TOKENS", "256"))
ROLES = {"user": HumanMessage, "assistant": AIMessage, "system": SystemMessage}


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
            base_url=BASE_URL, api_key=api_key, model=MODEL, max_tokens=MAX_TOKENS, max_retries=0, timeout=60
        )
    return llm


def to_messages(req):
    text = req.strip()
    if text.startswith("{"):
        try:
            body = json.loads(text)
            return [ROLES.get(m["role"], HumanMessage)(content=m["content"]) for m in body["messages"]]
        except (ValueError, KeyError, TypeError):
            pass
    return [HumanMessage(content=text)]


def sse(data, event=None):
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def handle(req):
    llm = model_for(read_api_key())
    messages = to_messages(req)

    def events():
        chunks = llm.stream(messages)
        try:
            for chunk in chunks:
                if chunk.content:
                    yield sse({"content": chunk.content})
            yield sse({}, "done")
        except Exception as exc:  # LangChain wraps the OpenAI errors in its own types
            yield sse({"error": {"message": f"the model stream failed: {type(exc).__name__}: {exc}"}}, "error")
        finally:
            chunks.close()  # closes the upstream request when the client goes away

    return Response(events(), mimetype="text/event-stream")
