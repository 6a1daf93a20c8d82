"""Turn an SSE response of a chat function into plain text on the terminal, as it arrives."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import httpx
from httpx_sse import EventSource

from ..errors import StreamfaasError
from ._text import lines_printable


class StreamFailed(StreamfaasError):
    """The function reported ``event: error``."""


@dataclass
class StreamEnd:
    """How an answer ended, from ``event: done`` and its ``{"finish_reason", "usage"}``."""

    done: bool = False
    finish_reason: str | None = None
    completion_tokens: int | None = None
    deltas: int = 0

    def cut_note(self) -> str | None:
        """``cut at N tokens`` when the answer stopped at its token limit, else None."""
        if self.finish_reason != "length":
            return None
        count = self.completion_tokens if self.completion_tokens is not None else self.deltas
        return f"cut at {count} token{'' if count == 1 else 's'}"

    def read_done(self, raw: str) -> None:
        self.done = True
        try:
            data = json.loads(raw)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        reason = data.get("finish_reason")
        self.finish_reason = reason if isinstance(reason, str) else None
        usage = data.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if isinstance(tokens, int) and not isinstance(tokens, bool):
            self.completion_tokens = tokens


def content_deltas(response: httpx.Response, end: StreamEnd | None = None) -> Iterator[str]:
    """Yield each delta's text; raise StreamFailed on ``event: error``; stop at ``event: done``
    (whose finish reason and usage go into ``end``).

    A ``data:`` that is not ``{"content": …}`` JSON is passed on as a line of its own.
    """
    end = end if end is not None else StreamEnd()
    for event in EventSource(response).iter_sse():
        if event.event == "error":
            raise StreamFailed(_error_message(event.data))
        if event.event == "done":
            end.read_done(event.data)
            return
        try:
            data = json.loads(event.data)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("content"), str):
            end.deltas += 1
            yield data["content"]
        elif event.data:
            yield event.data + "\n"


def _error_message(raw: str) -> str:
    try:
        data = json.loads(raw)
        return str(data["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw or "the stream failed"


def http_error_text(response: httpx.Response) -> str:
    """One line for an HTTP error: ``{"error": {"message": …}}``'s message, else the body's
    first line."""
    text = response.read().decode(errors="replace").strip()
    if text.startswith("{"):
        message = _error_message(text)
        if message != text:
            return message.splitlines()[0] if message else ""
    return text.splitlines()[0] if text else ""


class Writer(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


def print_deltas(response: httpx.Response, out: Writer, end: StreamEnd | None = None) -> str:
    """Write deltas to ``out`` as they arrive (flushing each); returns the whole text.

    What is written has its control characters but line breaks and tabs shown escaped (a
    model's or a function's text must not set the clipboard with OSC 52, retitle the window,
    clear the screen); the text returned is the stream's own (a chat's history).
    """
    parts = []
    for text in content_deltas(response, end):
        out.write(lines_printable(text))
        out.flush()
        parts.append(text)
    return "".join(parts)
