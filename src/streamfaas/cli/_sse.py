"""Turn an SSE response of a chat function into plain text on the terminal, as it arrives."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Protocol

import httpx
from httpx_sse import EventSource

from ..errors import StreamfaasError


class StreamFailed(StreamfaasError):
    """The function reported ``event: error``."""


def content_deltas(response: httpx.Response) -> Iterator[str]:
    """Yield each delta's text; raise StreamFailed on ``event: error``; stop at ``event: done``.

    A ``data:`` that is not ``{"content": …}`` JSON is passed on as a line of its own.
    """
    for event in EventSource(response).iter_sse():
        if event.event == "error":
            raise StreamFailed(_error_message(event.data))
        if event.event == "done":
            return
        try:
            data = json.loads(event.data)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("content"), str):
            yield data["content"]
        elif event.data:
            yield event.data + "\n"


def _error_message(raw: str) -> str:
    try:
        data = json.loads(raw)
        return str(data["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw or "the stream failed"


class Writer(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


def print_deltas(response: httpx.Response, out: Writer) -> str:
    """Write deltas to ``out`` as they arrive (flushing each); returns the whole text."""
    parts = []
    for text in content_deltas(response):
        out.write(text)
        out.flush()
        parts.append(text)
    return "".join(parts)
