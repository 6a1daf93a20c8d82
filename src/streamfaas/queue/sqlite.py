"""The embedded queue: one SQLite file (WAL) in the state directory; no server to run.

All statements run on one thread, off the event loop. Operations that arrive together share
one transaction and one commit (group commit), so a submit pays at most one fsync however many
clients submit at once. Several processes (gateway, standalone workers) may share the file:
SQLite's write lock serialises them, and leases decide who runs a job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .base import Deliver, FunctionSlots, JobQueue, Lease, QueueUnavailable, first_of
from .job import Job, JobInfo, QueueDepth

T = TypeVar("T")
log = logging.getLogger("streamfaas.queue")
Op = Callable[[sqlite3.Connection], Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT NOT NULL,
    function TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    callback_url TEXT,
    submitted_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    available_at REAL NOT NULL,
    lease_owner TEXT,
    private_ok INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_call_id ON jobs(call_id);
"""
_IDLE_POLL = 0.5  # seconds between looks for other processes' jobs, once idle a while
_COLUMNS = "id, call_id, function, method, path, query, headers, body, callback_url, submitted_at, attempts, last_error, private_ok"


def _job(row: tuple[Any, ...]) -> tuple[int, Job]:
    return row[0], Job(
        call_id=row[1],
        function=row[2],
        method=row[3],
        path=row[4],
        query=row[5],
        headers=tuple((k, v) for k, v in json.loads(row[6])),
        body=bytes(row[7]),
        callback_url=row[8],
        submitted_at=row[9],
        attempts=row[10],
        last_error=row[11],
        private_ok=bool(row[12]),
    )


def _used_bytes(conn: sqlite3.Connection) -> int:
    """The database's pages in use (freed pages are reused, so the file's own size only grows)."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int(pages * conn.execute("PRAGMA page_size").fetchone()[0])


_Leased = tuple[list[Lease], float | None]  # jobs leased; else when the next one is due


class SqliteLease(Lease):
    def __init__(self, queue: SqliteQueue, row_id: int, owner: str, job: Job) -> None:
        super().__init__(job)
        self._queue = queue
        self._id = row_id
        self._owner = owner

    async def ack(self) -> None:
        await self._queue.run(lambda c: c.execute("DELETE FROM jobs WHERE id=?", (self._id,)))

    def _mine(self, sql: str, *params: Any) -> Op:
        # Only while the lease is still ours: if it ran out, another worker owns the job now.
        return lambda c: c.execute(f"{sql} WHERE id=? AND lease_owner=?", (*params, self._id, self._owner))

    async def retry(self, error: str, delay: float) -> None:
        sql = "UPDATE jobs SET attempts=attempts+1, last_error=?, available_at=?, lease_owner=NULL"
        await self._queue.run(self._mine(sql, error, time.time() + delay))

    async def dead_letter(self, error: str) -> None:
        sql = "UPDATE jobs SET state='failed', attempts=attempts+1, last_error=?, lease_owner=NULL"
        await self._queue.run(self._mine(sql, error))

    async def release(self) -> None:
        await self._queue.run(self._mine("UPDATE jobs SET available_at=?, lease_owner=NULL", time.time()))

    async def note(self, error: str) -> None:
        await self._queue.run(self._mine("UPDATE jobs SET last_error=?", error))

    async def keep_alive(self) -> None:
        await self._queue.run(self._mine("UPDATE jobs SET available_at=?", time.time() + self._queue.lease))


class SqliteQueue(JobQueue):
    name = "sqlite"

    def __init__(self, path: Path, *, lease: float = 30.0, poll_interval: float = 0.05, max_bytes: int = 0) -> None:
        self.path = path
        self.max_bytes = max_bytes  # 0: no limit
        self.lease = lease
        self.poll_interval = poll_interval
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._leases = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="streamfaas-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._ops: list[tuple[Op, bool, asyncio.Future[Any]]] = []
        self._has_ops = asyncio.Event()
        self._submitted = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    # ---- the one thread that touches the database ----
    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.executescript(_SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        if "private_ok" not in columns:  # a queue.db from before it was kept
            try:
                conn.execute("ALTER TABLE jobs ADD COLUMN private_ok INTEGER NOT NULL DEFAULT 1")
            except sqlite3.OperationalError as exc:  # another process added it meanwhile
                if "duplicate column" not in str(exc):
                    raise
        self._conn = conn

    def _apply(self, batch: list[tuple[Op, bool, asyncio.Future[Any]]]) -> list[tuple[bool, Any]]:
        conn = self._conn
        assert conn is not None
        # A 202 promises the job survives a power cut, so a batch with a submit is fsynced;
        # losing a lease or an ack in a crash only runs a job once more.
        durable = any(d for _, d, _ in batch)
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        conn.execute("BEGIN IMMEDIATE")
        results: list[tuple[bool, Any]] = []
        try:
            for op, _, _ in batch:
                conn.execute("SAVEPOINT op")
                try:
                    results.append((True, op(conn)))
                except (sqlite3.Error, QueueUnavailable) as exc:  # the op's own refusal too (a full queue)
                    conn.execute("ROLLBACK TO op")
                    results.append((False, exc))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._has_ops.wait()
            self._has_ops.clear()
            batch, self._ops = self._ops, []
            if not batch:
                if self._closing:
                    return
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._apply, batch)
            except (sqlite3.Error, OSError) as exc:
                error = QueueUnavailable(f"queue database {self.path}: {exc}")
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(error)
                continue
            for (_, _, fut), (ok, value) in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                elif isinstance(value, QueueUnavailable):
                    fut.set_exception(value)
                else:
                    fut.set_exception(QueueUnavailable(f"queue database {self.path}: {value}"))

    async def run(self, op: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        """Run ``op`` in the next transaction; with ``durable``, its commit is fsynced."""
        if self._writer is None or self._closing:
            raise QueueUnavailable("the queue is not open")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._ops.append((op, durable, fut))
        self._has_ops.set()
        return await asyncio.shield(fut)

    # ---- JobQueue ----
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open)
        except (sqlite3.Error, OSError) as exc:
            raise QueueUnavailable(f"cannot open the queue database {self.path}: {exc}") from None
        self._writer = asyncio.create_task(self._write_loop(), name="sqlite-queue-writer")

    async def close(self) -> None:
        writer = self._writer
        if writer is not None:
            # Operations already queued finish; the writer ends when none is left.
            self._closing = True
            self._has_ops.set()
            await writer
            self._writer = None
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)

    async def submit(self, job: Job) -> None:
        row = (
            job.call_id, job.function, job.method, job.path, job.query, json.dumps(job.headers),
            job.body, job.callback_url, job.submitted_at, job.attempts, job.last_error,
            max(job.submitted_at, job.not_before), int(job.private_ok),
        )
        sql = (
            "INSERT INTO jobs (call_id, function, method, path, query, headers, body, callback_url,"
            " submitted_at, attempts, last_error, available_at, private_ok) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
        )
        size = len(job.body) + len(row[5])

        def insert(c: sqlite3.Connection) -> None:
            # Anyone may queue a job: without a bound, 1 MiB submits to a slow function filled
            # the disk at ~40 MiB/s. Past it the oldest dead letters go first (else jobs made to
            # fail would close the queue for good), then a submit is refused.
            excess = _used_bytes(c) + size - self.max_bytes if self.max_bytes else 0
            if excess > 0:
                # The oldest dead letters whose bodies make the room, if they can; else refused.
                last, freed = None, 0
                for row_id, nbytes in c.execute(
                    "SELECT id, length(body) + length(headers) FROM jobs WHERE state='failed' ORDER BY id"
                ):
                    last, freed = row_id, freed + nbytes
                    if freed >= excess:
                        break
                if last is None or freed < excess:
                    raise QueueUnavailable(f"the queue is full (--queue-max-bytes {self.max_bytes}): try again later")
                dropped = c.execute("DELETE FROM jobs WHERE state='failed' AND id<=?", (last,)).rowcount
                log.warning("queue: full: dropped the %d oldest dead-lettered job(s)", dropped)
            c.execute(sql, row)

        await self.run(insert, durable=True)
        self._submitted.set()

    def _lease_op(self, running: dict[str, int], per_function: int) -> Callable[[sqlite3.Connection], _Leased]:
        self._leases += 1
        owner = f"{self._owner}:{self._leases}"
        saturated = [fn for fn, n in running.items() if n >= per_function]
        runnable = f" AND function NOT IN ({','.join('?' * len(saturated))})" if saturated else ""

        def op(conn: sqlite3.Connection) -> _Leased:
            now = time.time()
            sql = f"SELECT id, function FROM jobs WHERE state='pending' AND available_at<=?{runnable} ORDER BY id LIMIT 512"
            rows = conn.execute(sql, (now, *saturated)).fetchall()
            taken: dict[str, int] = {}
            ids: list[int] = []
            for row_id, fn in rows:
                if running.get(fn, 0) + taken.get(fn, 0) < per_function:
                    taken[fn] = taken.get(fn, 0) + 1
                    ids.append(row_id)
            if not ids:
                # When the next job becomes runnable: a retry's backoff, or a lost lease, ends.
                due = conn.execute(f"SELECT MIN(available_at) FROM jobs WHERE state='pending'{runnable}", saturated)
                return [], due.fetchone()[0]
            marks = ",".join("?" * len(ids))
            conn.execute(f"UPDATE jobs SET available_at=?, lease_owner=? WHERE id IN ({marks})", (now + self.lease, owner, *ids))
            found = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id IN ({marks}) ORDER BY id", ids)
            return [SqliteLease(self, row_id, owner, job) for row_id, job in map(_job, found)], None

        return op

    async def consume(self, slots: FunctionSlots, deliver: Deliver, stop: asyncio.Event) -> None:
        interval = self.poll_interval
        while not stop.is_set():
            # Cleared before the look, so that what happens during it wakes the wait below; left
            # set, either one would turn that wait into a busy loop of transactions.
            self._submitted.clear()
            slots.given_back.clear()
            try:
                leases, due = await self.run(self._lease_op(slots.snapshot(), slots.per_function))
            except QueueUnavailable as exc:
                log.warning("queue: cannot lease jobs: %s", exc)
                leases, due = [], None
            for lease in leases:
                slots.take(lease.job.function)
                deliver(lease)
            if leases:
                interval = self.poll_interval
                continue
            # Nothing to run: wake on a local submit, a freed slot, or when the next job is due.
            # Other processes' submits are seen by polling, less often the longer it stays idle:
            # an idle gateway should cost next to nothing.
            wait = interval if due is None else min(interval, max(due - time.time(), 0.0) + 0.001)
            interval = min(interval * 2, max(self.poll_interval, _IDLE_POLL))
            await first_of((self._submitted, slots.given_back, stop), wait)

    async def depth(self) -> QueueDepth:
        rows = await self.run(lambda c: c.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        counts = dict(rows)
        return QueueDepth(pending=counts.get("pending", 0), failed=counts.get("failed", 0))

    async def list_jobs(self, *, failed: bool, limit: int) -> list[JobInfo]:
        state = "failed" if failed else "pending"
        sql = f"SELECT {_COLUMNS} FROM jobs WHERE state=? ORDER BY id LIMIT ?"
        rows = await self.run(lambda c: c.execute(sql, (state, limit)).fetchall())
        return [JobInfo.of(job, state) for _, job in map(_job, rows)]

    async def retry_failed(self, call_id: str | None) -> int:
        sql = "UPDATE jobs SET state='pending', attempts=0, available_at=?, lease_owner=NULL WHERE state='failed'"
        params: tuple[Any, ...] = (time.time(),)
        if call_id is not None:
            sql += " AND call_id=?"
            params += (call_id,)
        count: int = await self.run(lambda c: c.execute(sql, params).rowcount, durable=True)
        if count:
            self._submitted.set()
        return count

    async def purge(self, *, failed: bool) -> int:
        state = "failed" if failed else "pending"
        count: int = await self.run(lambda c: c.execute("DELETE FROM jobs WHERE state=?", (state,)).rowcount)
        return count
