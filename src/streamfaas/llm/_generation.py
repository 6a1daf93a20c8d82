"""One generation: the hand-off between the model's worker thread and the request's handler."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ._errors import OpenAIError
from ._requests import GenerationRequest


class Generation:
    """Texts flow from the worker thread to the handler through an asyncio queue; ``None`` marks
    the end. Stopping flows back through ``cancelled``, which the worker reads before it hands
    llama.cpp the next token, so a cancelled generation stops within one token.

    Fields written by the worker (``tokens``, ``finish_reason``, ``usage``, ``stopped_at``) are
    read by the handler only after the end marker, which the loop delivers after the worker
    returned.
    """

    __slots__ = (
        "request",
        "arrived_at",
        "last_token_at",
        "cancelled",
        "cancelled_at",
        "error",
        "finish_reason",
        "stopped_at",
        "tokens",
        "usage",
        "_loop",
        "_queue",
    )

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop, arrived_at: float = 0.0) -> None:
        self.request = request
        self.arrived_at = arrived_at or time.perf_counter()  # for the time to first token
        self.last_token_at = 0.0
        self.cancelled = False
        self.cancelled_at = 0.0
        self.error: OpenAIError | None = None
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.stopped_at = 0.0
        self.tokens = 0
        self._loop = loop
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()

    # -- worker thread side --------------------------------------------------------------------

    def emit(self, text: str) -> bool:
        """Hand one piece of text to the handler; False once the loop is gone (shutdown)."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, text)
        except RuntimeError:
            self.cancelled = True
            return False
        return True

    # -- event loop side -----------------------------------------------------------------------

    async def next_text(self) -> str | None:
        """The next piece of text, or None when the generation ended (see ``error``)."""
        return await self._queue.get()

    def take_ready(self) -> list[str | None]:
        """Texts already queued: a slow reader gets them in one write, not one write each."""
        ready: list[str | None] = []
        while not self._queue.empty():
            ready.append(self._queue.get_nowait())
        return ready

    def cancel(self, error: OpenAIError | None = None) -> None:
        """Stop generating (a no-op once ended). ``error`` is what a still-open stream is told."""
        if not self.cancelled and self.stopped_at == 0.0:
            self.cancelled = True
            self.cancelled_at = time.perf_counter()
            if error is not None and self.error is None:
                self.error = error

    def finished(self) -> None:
        """Called on the loop once the worker returned: wake the handler with the end marker."""
        self._queue.put_nowait(None)
