"""OpenAI's response shapes: whole completions, and the SSE chunks of a streamed one."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from ._errors import OpenAIError
from ._requests import Kind

DONE = b"data: [DONE]\n\n"


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def new_response_id(kind: Kind) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_urlsafe(18)


def normalize_usage(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """OpenAI's usage object from llama.cpp's (which adds fields OpenAI does not have)."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    normalized: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    details = usage.get("prompt_tokens_details")
    if isinstance(details, Mapping) and "cached_tokens" in details:
        normalized["prompt_tokens_details"] = {"cached_tokens": int(details["cached_tokens"] or 0)}
    return normalized


class ChunkEncoder:
    """Renders the SSE chunks of one streamed response.

    Everything but the text is the same in every chunk of a response, so it is rendered once;
    a token then costs one ``json.dumps`` of its text and one concatenation.
    """

    __slots__ = ("_head", "_tail", "_kind", "_include_usage", "_envelope")

    def __init__(
        self, kind: Kind, response_id: str, created: int, model: str, *, include_usage: bool
    ) -> None:
        self._kind = kind
        self._include_usage = include_usage
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self._envelope = (
            f'{{"id":{_dumps(response_id)},"object":"{obj}","created":{created},'
            f'"model":{_dumps(model)},"system_fingerprint":null,"choices":'
        )
        # OpenAI puts "usage": null in every chunk but the last when usage was asked for.
        usage_tail = ',"usage":null}' if include_usage else "}"
        if kind == "chat":
            self._head = (self._envelope + '[{"index":0,"delta":{"content":').encode()
            self._tail = ('},"logprobs":null,"finish_reason":null}]' + usage_tail + "\n\n").encode()
        else:
            self._head = (self._envelope + '[{"index":0,"text":').encode()
            self._tail = (',"logprobs":null,"finish_reason":null}]' + usage_tail + "\n\n").encode()
        self._head = b"data: " + self._head

    def opening(self) -> bytes:
        """The first chunk: a chat stream announces the assistant's role before any text."""
        if self._kind != "chat":
            return b""
        choices = '[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]'
        return self._event(choices, usage="null" if self._include_usage else None)

    def text(self, text: str) -> bytes:
        return self._head + _dumps(text).encode() + self._tail

    def call_start(self, call_id: str, name: str) -> bytes:
        """A tool call's first chunk: its id and name (the arguments follow)."""
        call = {
            "index": 0,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        return self._delta({"tool_calls": [call]})

    def call_arguments(self, text: str) -> bytes:
        return self._delta({"tool_calls": [{"index": 0, "function": {"arguments": text}}]})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        choices = f'[{{"index":0,"delta":{_dumps(delta)},"logprobs":null,"finish_reason":null}}]'
        return self._event(choices, usage="null" if self._include_usage else None)

    def finish(self, finish_reason: str | None, usage: Mapping[str, Any] | None) -> bytes:
        """The closing chunks: the finish reason, the usage chunk if asked for, and [DONE]."""
        reason = _dumps(finish_reason or "stop")
        if self._kind == "chat":
            choices = f'[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":{reason}}}]'
        else:
            choices = f'[{{"index":0,"text":"","logprobs":null,"finish_reason":{reason}}}]'
        out = self._event(choices, usage="null" if self._include_usage else None)
        if self._include_usage:
            out += self._event("[]", usage=_dumps(normalize_usage(usage)))
        return out + DONE

    def _event(self, choices: str, *, usage: str | None) -> bytes:
        tail = "}" if usage is None else f',"usage":{usage}}}'
        return f"data: {self._envelope}{choices}{tail}\n\n".encode()


def error_event(error: OpenAIError) -> bytes:
    """A failure after the stream started: OpenAI's SDKs raise on an ``error`` event."""
    return f"event: error\ndata: {_dumps(error.to_json())}\n\n".encode()


def completion_body(
    kind: Kind,
    response_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str | None,
    usage: Mapping[str, Any] | None,
    tool_call: tuple[str, str, str] | None = None,
) -> dict[str, Any]:
    """A whole (not streamed) response; ``tool_call`` is (id, name, arguments) of a call."""
    choice: dict[str, Any]
    if kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if tool_call is not None:
            call_id, name, arguments = tool_call
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ]
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": finish_reason or "stop",
        }
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason or "stop",
        }
    return {
        "id": response_id,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [choice],
        "usage": normalize_usage(usage),
    }


def model_card(model: str, created: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": "streamfaas"}


def now() -> int:
    return int(time.time())
