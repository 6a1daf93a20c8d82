"""The queue interface both backends implement, and the per-function concurrency slots."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable

from ..errors import StreamfaasError
from .job import Job, JobInfo, QueueDepth


class QueueUnavailable(StreamfaasError):
    """The queue's storage (the SQLite file, the NATS server) cannot take or give jobs now."""

    http_status = 503


class JobNotFound(StreamfaasError):
    http_status = 404


async def first_of(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    """Wait until one of ``events`` is set, or ``timeout`` seconds."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


class Lease(ABC):
    """One job taken from the queue by a worker. Exactly one of ``ack``, ``retry``,
    ``dead_letter`` or ``release`` ends it; until then no other worker gets the job, as long
    as ``keep_alive`` is called more often than the queue's lease time."""

    def __init__(self, job: Job) -> None:
        self.job = job

    @abstractmethod
    async def ack(self) -> None:
        """Done (delivered): remove the job for good."""

    @abstractmethod
    async def retry(self, error: str, delay: float) -> None:
        """This attempt failed: count it and run the job again in ``delay`` seconds."""

    @abstractmethod
    async def dead_letter(self, error: str) -> None:
        """Out of attempts: move the job to the dead-letter list."""

    @abstractmethod
    async def release(self) -> None:
        """Not run to the end (shutdown): put the job back at once; the attempt does not count."""

    @abstractmethod
    async def note(self, error: str) -> None:
        """Show ``error`` as the job's last error while it stays leased (its callback is being
        retried), where the queue can change a leased job."""

    @abstractmethod
    async def keep_alive(self) -> None:
        """Still working on it: extend the lease."""


Deliver = Callable[[Lease], None]


class JobQueue(ABC):
    """Durable storage of async invocations. ``submit`` returns only once the job is stored."""

    name: str

    @abstractmethod
    async def start(self) -> None:
        """Connect, create what is missing (tables, streams)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def submit(self, job: Job) -> None: ...

    @abstractmethod
    async def consume(self, slots: FunctionSlots, deliver: Deliver, stop: asyncio.Event) -> None:
        """Lease jobs while ``stop`` is unset, never more per function than ``slots`` allow,
        and hand each to ``deliver`` (which takes its slot back when the lease ends)."""

    @abstractmethod
    async def depth(self) -> QueueDepth: ...

    @abstractmethod
    async def list_jobs(self, *, failed: bool, limit: int) -> list[JobInfo]: ...

    @abstractmethod
    async def retry_failed(self, call_id: str | None) -> int:
        """Move dead-lettered jobs (one call id, or all) back to the queue with fresh attempts."""

    @abstractmethod
    async def purge(self, *, failed: bool) -> int:
        """Drop every dead-lettered job (``failed``) or every queued one; return how many."""


class FunctionSlots:
    """How many jobs of each function may run at once in this worker.

    A backend reserves slots before it leases (so it never takes more jobs than can run);
    the worker gives each back when its lease ends.
    """

    def __init__(self, per_function: int) -> None:
        self.per_function = per_function
        self._running: dict[str, int] = {}
        self._changed = asyncio.Event()

    def free(self, function: str) -> int:
        return self.per_function - self._running.get(function, 0)

    def saturated(self) -> set[str]:
        return {fn for fn, n in self._running.items() if n >= self.per_function}

    def take(self, function: str, count: int = 1) -> None:
        self._running[function] = self._running.get(function, 0) + count

    def give(self, function: str, count: int = 1) -> None:
        left = self._running.get(function, 0) - count
        if left > 0:
            self._running[function] = left
        else:
            self._running.pop(function, None)
        if count > 0:
            self._changed.set()

    def running(self) -> int:
        return sum(self._running.values())

    def snapshot(self) -> dict[str, int]:
        """Running jobs by function, as of now."""
        return dict(self._running)

    @property
    def given_back(self) -> asyncio.Event:
        """Set whenever a slot is given back (cleared by whoever waits on it)."""
        return self._changed

    async def changed(self, timeout: float) -> None:
        """Wait until a slot is given back, or ``timeout`` seconds."""
        self._changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            pass

    async def reserve(self, function: str, most: int, stop: asyncio.Event) -> int:
        """Take up to ``most`` free slots of ``function``, waiting for one; 0 once ``stop`` is set."""
        while not stop.is_set():
            free = min(self.free(function), most)
            if free > 0:
                self.take(function, free)
                return free
            await self.changed(0.5)
        return 0
