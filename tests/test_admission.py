"""Admission per event-loop turn (streamfaas/admission.py): pure scheduling logic, tested on a
real event loop. Its effect on bursts is measured in bench/bench_burst.py."""

from __future__ import annotations

import asyncio

from streamfaas.admission import Admission


async def _turns_of(
    gate: Admission, requests: int, cancel: set[int] = frozenset()
) -> dict[int, int]:
    """Start ``requests`` at once; the loop turn in which each got in (cancelled ones absent)."""
    turn = 0
    stop = False

    def tick() -> None:  # counts the loop's turns: one call per turn
        nonlocal turn
        turn += 1
        if not stop:
            asyncio.get_running_loop().call_soon(tick)

    got: dict[int, int] = {}

    async def one(i: int) -> None:
        await gate.enter()
        got[i] = turn

    asyncio.get_running_loop().call_soon(tick)
    tasks = [asyncio.create_task(one(i)) for i in range(requests)]
    await asyncio.sleep(0)  # every task has run up to enter()
    for i in cancel:
        tasks[i].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stop = True
    return got


def test_at_most_per_turn_requests_start_in_one_turn_in_arrival_order() -> None:
    got = asyncio.run(_turns_of(Admission(4), 10))
    assert sorted(got) == list(range(10))
    per_turn: dict[int, int] = {}
    for t in got.values():
        per_turn[t] = per_turn.get(t, 0) + 1
    assert max(per_turn.values()) == 4
    assert len(per_turn) == 3  # 4 + 4 + 2
    order = sorted(got, key=lambda i: (got[i], i))
    assert order == list(range(10))
    assert [got[i] for i in range(10)] == sorted(got[i] for i in range(10))


def test_a_quiet_loop_admits_at_once() -> None:
    async def main() -> bool:
        gate = Admission(4)
        await gate.enter()
        task = asyncio.ensure_future(gate.enter())
        await asyncio.sleep(0)
        return task.done()

    assert asyncio.run(main())


def test_cancelled_waiters_are_skipped_and_take_no_place() -> None:
    got = asyncio.run(_turns_of(Admission(2), 8, cancel={2, 3, 4}))
    assert sorted(got) == [0, 1, 5, 6, 7]
    first = min(got.values())
    assert got[0] == got[1] == first
    assert got[5] == got[6]  # the cancelled ones left no gap: 5 and 6 share the next turn
    assert got[7] == got[5] + 1


def test_zero_means_no_limit() -> None:
    got = asyncio.run(_turns_of(Admission(0), 50))
    assert len(set(got.values())) == 1
