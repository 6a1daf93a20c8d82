"""Admission per event-loop turn: at most N new requests start their work in one turn of the
loop; the others wait, in arrival order, for the next turns.

Why: when a thousand streams open at once, every request handler becomes ready in the same
turn, and the loop runs them all (about half a millisecond each in the gateway) before it looks
at its sockets again. Meanwhile the streams already open wait: their next event sits in a
socket for tens of milliseconds (bench_burst.py, "first 3 events"). And since every opening
request advances one step per turn, in lockstep, most of them get their first byte near the
end of the burst. Admitting one per turn interleaves opening with serving, and lets the
first requests finish opening first: the same work in the same order, not all at once.

A turn with fewer than N new requests admits them at once; an idle gateway never waits here.
"""

from __future__ import annotations

import asyncio
from collections import deque

# One a turn: a 100-stream burst's first events p99 fell from 20-27 ms (16 a turn) to 8-10 ms, with
# the 1,000-stream figures and short-request throughput unchanged beyond their noise
# (bench/README.md, "One new request a turn").
DEFAULT_PER_TURN = 1


class Admission:
    """One event loop's gate. ``per_turn`` 0: no limit."""

    __slots__ = ("per_turn", "_admitted", "_waiting", "_armed", "_loop")

    def __init__(self, per_turn: int = DEFAULT_PER_TURN) -> None:
        self.per_turn = per_turn
        self._admitted = 0  # in this turn
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._armed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def enter(self) -> None:
        """Return in this turn if it has room and nobody waits, else in a later one."""
        if not self.per_turn:
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._admitted < self.per_turn and not self._waiting:
            self._admitted += 1
            self._arm()
            return
        waiter = self._loop.create_future()
        self._waiting.append(waiter)
        self._arm()
        await waiter

    def _arm(self) -> None:
        # A callback scheduled now runs in the next turn, after the loop polled its sockets.
        if not self._armed:
            self._armed = True
            assert self._loop is not None
            self._loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._armed = False
        self._admitted = 0
        waiting = self._waiting
        while waiting and self._admitted < self.per_turn:
            waiter = waiting.popleft()
            if not waiter.done():  # a request cancelled while it waited (its client left)
                waiter.set_result(None)
                self._admitted += 1
        if self._admitted:
            self._arm()
