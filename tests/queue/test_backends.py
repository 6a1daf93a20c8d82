"""Both queue backends behind one interface: leases, per-function slots, release, retry, dead letters."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streamfaas.queue import FunctionSlots, Job, JobQueue, Lease
from streamfaas.queue.sqlite import SqliteQueue


def _make_queue(backend: str, nats_url: str | None, tmp_path: Path, max_bytes: int = 0) -> JobQueue:
    if backend == "nats":
        from streamfaas.queue.jetstream import NatsQueue

        assert nats_url is not None
        return NatsQueue(nats_url, stream=f"T_{uuid.uuid4().hex[:8]}", lease=1.0, fetch_wait=0.2, discover_interval=0.1,
                         max_bytes=max_bytes)
    return SqliteQueue(tmp_path / "queue.db", lease=1.0, poll_interval=0.02, max_bytes=max_bytes)


@pytest.fixture
async def queue(backend: str, nats_url: str | None, tmp_path: Path) -> AsyncIterator[JobQueue]:
    q = _make_queue(backend, nats_url, tmp_path)
    await q.start()
    try:
        yield q
    finally:
        await q.close()


class Consumer:
    """Runs ``consume`` in the background and keeps every lease it is handed."""

    def __init__(self, queue: JobQueue, per_function: int = 4) -> None:
        self.slots = FunctionSlots(per_function)
        self.leases: list[Lease] = []
        self.stop = asyncio.Event()
        self._arrived = asyncio.Event()
        self.task = asyncio.create_task(queue.consume(self.slots, self._deliver, self.stop))

    def _deliver(self, lease: Lease) -> None:
        self.leases.append(lease)
        self._arrived.set()

    async def wait(self, count: int, timeout: float = 10) -> list[Lease]:
        async with asyncio.timeout(timeout):
            while len(self.leases) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.leases

    async def end(self, lease: Lease) -> None:
        self.slots.give(lease.job.function)

    async def close(self) -> None:
        self.stop.set()
        await self.task


async def test_per_function_limit_does_not_hold_back_other_functions(queue: JobQueue) -> None:
    for i in range(6):
        await queue.submit(Job(call_id=f"a{i}", function="busy"))
    await queue.submit(Job(call_id="b0", function="other"))
    consumer = Consumer(queue, per_function=2)
    try:
        await consumer.wait(3)
        # A job submitted later is leased only on a later look at the queue: by then, one that
        # over-leased would have taken more of the busy function's jobs.
        await queue.submit(Job(call_id="c0", function="later"))
        await consumer.wait(4)
        assert consumer.leases[-1].job.call_id == "c0"
        functions = sorted(lease.job.function for lease in consumer.leases)
        assert functions == ["busy", "busy", "later", "other"]
        first = next(lease for lease in consumer.leases if lease.job.function == "busy")
        await first.ack()
        await consumer.end(first)
        await consumer.wait(5)
        assert [lease.job.function for lease in consumer.leases].count("busy") == 3
    finally:
        await consumer.close()
    for lease in consumer.leases:
        if lease is not first:
            await lease.release()


async def test_expired_lease_hands_the_job_out_again(queue: JobQueue) -> None:
    await queue.submit(Job(call_id="lost", function="fn", body=b"payload"))
    first = Consumer(queue)
    try:
        [lease] = await first.wait(1)
    finally:
        await first.close()
    # The worker holding it "died": no keep_alive, no ack. After the lease (1 s) it runs elsewhere,
    # and not before.
    second = Consumer(queue)
    try:
        with pytest.raises(TimeoutError):
            await second.wait(1, timeout=0.5)
        [again] = await second.wait(1)
        assert again.job.call_id == "lost" and again.job.body == b"payload"
        await again.ack()
    finally:
        await second.close()
    assert (await queue.depth()).pending == 0
    del lease


async def test_keep_alive_holds_the_lease_and_release_returns_the_job_at_once(queue: JobQueue) -> None:
    await queue.submit(Job(call_id="held", function="fn"))
    consumer = Consumer(queue)
    try:
        [lease] = await consumer.wait(1)
        for _ in range(4):  # two lease times, renewed every half: the job is not handed out again
            with pytest.raises(TimeoutError):
                await consumer.wait(2, timeout=0.5)
            await lease.keep_alive()
        await lease.release()
        await consumer.end(lease)
        await consumer.wait(2, timeout=0.9)  # back at once, not after the lease
        assert consumer.leases[1].job.attempts == 0  # a release is not a failed attempt
        await consumer.leases[1].ack()
    finally:
        await consumer.close()


async def test_retry_counts_the_attempt_and_waits_its_delay(queue: JobQueue) -> None:
    await queue.submit(Job(call_id="r", function="fn"))
    consumer = Consumer(queue)
    try:
        [lease] = await consumer.wait(1)
        await lease.retry("boom", 0.5)
        await consumer.end(lease)
        with pytest.raises(TimeoutError):  # not before its delay
            await consumer.wait(2, timeout=0.4)
        again = (await consumer.wait(2))[1]
        assert (again.job.attempts, again.job.last_error) == (1, "boom")
        await again.dead_letter("boom again")
        await consumer.end(again)
    finally:
        await consumer.close()
    [failed] = await queue.list_jobs(failed=True, limit=10)
    assert (failed.call_id, failed.attempts, failed.last_error) == ("r", 2, "boom again")
    assert await queue.retry_failed("r") == 1
    assert (await queue.depth()).failed == 0
    [pending] = await queue.list_jobs(failed=False, limit=10)
    assert (pending.call_id, pending.attempts) == ("r", 0)
    assert await queue.purge(failed=False) == 1


async def test_whether_its_caller_could_call_a_private_function_travels_with_the_job(queue: JobQueue) -> None:
    for ok in (False, True):
        await queue.submit(Job(call_id=f"p-{ok}", function=f"f{int(ok)}", private_ok=ok))
    consumer = Consumer(queue)
    try:
        leases = await consumer.wait(2)
        assert {lease.job.call_id: lease.job.private_ok for lease in leases} == {"p-False": False, "p-True": True}
    finally:
        await consumer.close()


async def test_a_queue_db_from_before_private_ok_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, call_id TEXT NOT NULL, function TEXT NOT NULL,"
        " method TEXT NOT NULL, path TEXT NOT NULL, query TEXT NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL,"
        " callback_url TEXT, submitted_at REAL NOT NULL, state TEXT NOT NULL DEFAULT 'pending',"
        " attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '', available_at REAL NOT NULL,"
        " lease_owner TEXT);"
        "INSERT INTO jobs (call_id, function, method, path, query, headers, body, submitted_at, available_at)"
        " VALUES ('old', 'f', 'POST', '', '', '[]', x'', 0, 0);"
    )
    old.commit()
    old.close()
    q = SqliteQueue(path, lease=1.0, poll_interval=0.02)
    await q.start()
    try:
        consumer = Consumer(q)
        try:
            [lease] = await consumer.wait(1)
            # Checked at submit then as now: it keeps the token it would have had.
            assert (lease.job.call_id, lease.job.private_ok) == ("old", True)
        finally:
            await consumer.close()
    finally:
        await q.close()


async def test_a_function_in_another_namespace_is_queued_and_consumed(queue: JobQueue) -> None:
    # NAME.NAMESPACE (Kubernetes' other namespaces): the dot is NATS's subject separator.
    await queue.submit(Job(call_id="ns-1", function="fn.other-ns"))
    consumer = Consumer(queue)
    try:
        [lease] = await consumer.wait(1)
        assert (lease.job.call_id, lease.job.function) == ("ns-1", "fn.other-ns")
        await lease.ack()
    finally:
        await consumer.close()


async def test_a_full_queue_refuses_new_jobs_with_503_and_takes_them_again_once_drained(
        backend: str, nats_url: str | None, tmp_path: Path) -> None:
    # Anyone may queue a job: unbounded, 1 MiB submits filled the disk at ~40 MiB/s.
    from streamfaas.queue.base import QueueUnavailable

    q = _make_queue(backend, nats_url, tmp_path, max_bytes=1 << 20)
    await q.start()
    try:
        # 40 × 64 KiB at once (2.5 MiB, past the limit): concurrent submits see each other.
        results = await asyncio.gather(
            *(q.submit(Job(call_id=f"full-{i}", function="fn", body=b"x" * 65536)) for i in range(40)),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, QueueUnavailable)]
        assert refused and all(r.http_status == 503 for r in refused)
        stored = sum(r is None for r in results)
        assert 8 <= stored < 20, stored
        consumer = Consumer(q, per_function=64)
        try:
            leases = await consumer.wait(stored)
            for lease in leases:
                await lease.ack()
            deadline = asyncio.get_running_loop().time() + 5  # NATS: what the streams hold is asked once a second
            while True:
                try:
                    await q.submit(Job(call_id="after", function="fn", body=b"x" * 65536))  # room again
                    break
                except QueueUnavailable:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.1)
        finally:
            await consumer.close()
    finally:
        await q.close()


async def test_a_full_sqlite_queue_drops_its_oldest_dead_letters_before_refusing(tmp_path: Path) -> None:
    # Jobs made to fail would otherwise fill it for good: the oldest dead letters go first.
    from streamfaas.queue.base import QueueUnavailable

    q = SqliteQueue(tmp_path / "queue.db", lease=1.0, poll_interval=0.02, max_bytes=1 << 20)
    await q.start()
    try:
        for i in range(12):
            await q.submit(Job(call_id=f"dead-{i}", function="fn", body=b"x" * 65536))
        consumer = Consumer(q, per_function=64)
        try:
            for lease in await consumer.wait(12):
                await lease.dead_letter("failed")
        finally:
            await consumer.close()
        for i in range(12):  # as many again: room is made from the oldest dead letters
            await q.submit(Job(call_id=f"new-{i}", function="fn", body=b"x" * 65536))
        failed = [job.call_id for job in await q.list_jobs(failed=True, limit=100)]
        assert failed and "dead-0" not in failed and failed == sorted(failed, key=lambda c: int(c.split("-")[1]))
        assert len(await q.list_jobs(failed=False, limit=100)) == 12
        # Dead letters too small to make the room are kept, and the submit refused.
        with pytest.raises(QueueUnavailable):
            for i in range(40):
                await q.submit(Job(call_id=f"more-{i}", function="fn", body=b"x" * 65536))
        assert len(await q.list_jobs(failed=True, limit=100)) <= len(failed)
    finally:
        await q.close()
