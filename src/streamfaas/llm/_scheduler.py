"""Admission: ``parallel`` generations run, ``queue_size`` more wait in arrival order, the rest
get 429. Also the counters that ``GET /v1/stats`` reports."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any

from . import _errors as errors
from ._engine import Engine
from ._generation import Generation
from ._requests import GenerationRequest

log = logging.getLogger("streamfaas.llm")


class Scheduler:
    def __init__(self, engine: Engine, *, parallel: int, queue_size: int) -> None:
        self._engine = engine
        self._parallel = parallel
        self._queue_size = queue_size
        self._slots = asyncio.Semaphore(parallel)
        # One thread per slot: a generation holds its thread for as long as it holds its slot.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=parallel, thread_name_prefix="llm-generate"
        )
        self._active: set[Generation] = set()
        self._waiting = 0
        self._closed = False
        self._tokens_finished = 0
        self.requests_total = 0
        self.completed_total = 0
        self.cancelled_total = 0
        self.rejected_total = 0
        self.failed_total = 0
        self.prompt_tokens_total = 0
        self.last_cancel_to_stop_ms: float | None = None

    @property
    def capacity(self) -> int:
        """Requests the server takes at once: generating, plus waiting for a slot."""
        return self._parallel + self._queue_size

    @property
    def in_flight(self) -> int:
        return len(self._active) + self._waiting

    def check_room(self, arriving: int) -> None:
        """429 now if the server is full, counting ``arriving`` requests not submitted yet."""
        if self.in_flight + arriving >= self.capacity:
            self.rejected_total += 1
            raise errors.server_busy(len(self._active), self._waiting + arriving)

    async def submit(self, request: GenerationRequest) -> Generation:
        """Start a generation once a slot is free; 429 at once when the queue is full too."""
        if self._closed:
            raise errors.shutting_down()
        running = len(self._active)
        if running + self._waiting >= self._parallel + self._queue_size:
            self.rejected_total += 1
            raise errors.server_busy(running, self._waiting)
        self.requests_total += 1
        arrived_at = time.perf_counter()
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        loop = asyncio.get_running_loop()
        generation = Generation(request, loop, arrived_at)
        try:
            future = loop.run_in_executor(self._executor, self._engine.generate, generation)
        except RuntimeError:  # the executor shut down while this request waited
            self._slots.release()
            raise errors.shutting_down() from None
        self._active.add(generation)
        # The slot is freed when the worker returns, not when the handler does: a handler
        # cancelled by a disconnect leaves while its worker finishes its last token.
        future.add_done_callback(lambda done: self._finished(generation, done))
        return generation

    def _finished(self, generation: Generation, future: asyncio.Future[None]) -> None:
        self._active.discard(generation)
        self._slots.release()
        self._tokens_finished += generation.tokens
        if generation.usage is not None:
            prompt = generation.usage.get("prompt_tokens")
            if isinstance(prompt, int):
                self.prompt_tokens_total += prompt
        exc = future.exception() if not future.cancelled() else None
        if exc is not None:
            log.error("generation failed", exc_info=exc)
            generation.error = errors.internal_error()
        if generation.error is not None and not generation.cancelled:
            self.failed_total += 1
        elif generation.cancelled and generation.finish_reason is None:
            self.cancelled_total += 1
            if generation.cancelled_at:
                self.last_cancel_to_stop_ms = round(
                    (generation.stopped_at - generation.cancelled_at) * 1000.0, 3
                )
        else:
            self.completed_total += 1
        generation.finished()

    def stats(self) -> dict[str, Any]:
        return {
            "tokens_generated_total": self._tokens_finished
            + sum(generation.tokens for generation in self._active),
            "active_generations": len(self._active),
            "queued": self._waiting,
            "requests_total": self.requests_total,
            "completed_total": self.completed_total,
            "cancelled_total": self.cancelled_total,
            "rejected_total": self.rejected_total,
            "failed_total": self.failed_total,
            "last_cancel_to_stop_ms": self.last_cancel_to_stop_ms,
            "parallel": self._parallel,
            "queue_size": self._queue_size,
        }

    async def close(self) -> None:
        """Stop every generation and wait for the workers (each stops within one token)."""
        self._closed = True
        for generation in list(self._active):
            generation.cancel(errors.shutting_down())
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
