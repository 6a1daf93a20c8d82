"""The local provider's waiting requests (``provider.record.Turns``): a freed slot lets one
request go, the one that waited longest; a request woken and then cancelled (its client left)
passes its turn on, so a slot is never left free while others wait."""

from __future__ import annotations

import asyncio

from streamfaas.provider.record import Turns


async def _waiters(turns: Turns, n: int, done: list[int], timeout: float | None = None) -> list[asyncio.Task[None]]:
    async def one(i: int) -> None:
        await turns.wait(timeout)
        done.append(i)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0)  # one turn of the loop: each task runs up to its wait, in order
    assert len(turns) == n
    return tasks


def test_wake_one_lets_the_oldest_go_and_wake_all_the_rest() -> None:
    async def main() -> None:
        turns, done = Turns(), []
        tasks = await _waiters(turns, 4, done)
        turns.wake(1)
        await tasks[0]
        await asyncio.sleep(0)
        assert done == [0] and len(turns) == 3
        turns.wake(2)
        await asyncio.gather(*tasks[1:3])
        assert done == [0, 1, 2]
        turns.wake()
        await tasks[3]
        assert done == [0, 1, 2, 3] and len(turns) == 0

    asyncio.run(main())


def test_a_woken_request_that_is_cancelled_passes_its_turn_on() -> None:
    async def main() -> None:
        turns, done = Turns(), []
        tasks = await _waiters(turns, 3, done)
        turns.wake(1)  # the oldest gets its turn...
        tasks[0].cancel()  # ...but its client left before it could take the slot
        await asyncio.wait(tasks[:2], timeout=5)
        assert tasks[0].cancelled() and done == [1]
        assert not tasks[2].done() and len(turns) == 1
        tasks[2].cancel()
        await asyncio.gather(tasks[2], return_exceptions=True)
        assert len(turns) == 0

    asyncio.run(main())


def test_a_wait_times_out_and_leaves_the_queue() -> None:
    async def main() -> None:
        turns, done = Turns(), []
        await asyncio.gather(*await _waiters(turns, 2, done, timeout=0.01))
        assert sorted(done) == [0, 1] and len(turns) == 0
        turns.wake(1)  # nobody left to wake: a no-op

    asyncio.run(main())


def test_a_crowd_leaving_is_forgotten_without_losing_anyones_place() -> None:
    # Requests that leave stay in the queue until wake() passes them or the queue is compacted
    # (taking each one out of the middle would cost a walk of the queue per request).
    async def main() -> None:
        turns, done = Turns(), []
        tasks = await _waiters(turns, 1000, done)
        keep = {10, 500, 998}
        for i, task in enumerate(tasks):
            if i not in keep:
                task.cancel()
        await asyncio.gather(*(t for i, t in enumerate(tasks) if i not in keep), return_exceptions=True)
        assert len(turns) == 3
        assert len(turns._queue) < 100  # compacted, not 1,000 entries for 3 waiters
        turns.wake(1)
        await tasks[10]
        await asyncio.sleep(0)
        assert done == [10]  # the oldest who stayed, first
        turns.wake()
        await asyncio.gather(tasks[500], tasks[998])
        assert done == [10, 500, 998] and len(turns) == 0 and not turns._queue

    asyncio.run(main())
