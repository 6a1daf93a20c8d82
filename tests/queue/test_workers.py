"""Standalone workers: graceful shutdown, and several workers sharing one NATS queue."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from queue_fixture import ECHO, FAST_QUEUE, CallbackReceiver, NatsServer, Worker, queue_args, submit

from platform_fixture import Platform, wait_for


def _pulls_waiting(url: str, stream: str, consumer: str) -> int:
    """Pull requests waiting on a JetStream consumer: each worker keeps one per slot."""

    import nats  # the [nats] extra, as the nats_server fixture's tests need it

    async def ask() -> int:
        nc = await nats.connect(url)
        try:
            return (await nc.jetstream().consumer_info(stream, consumer)).num_waiting or 0
        finally:
            await nc.close()

    return asyncio.run(ask())


def _started(platform: Platform, name: str) -> float:
    text = httpx.get(f"{platform.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'gateway_function_invocation_started{{function_name="{name}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def slow_gateway(tmp_path: Path, backend: str, nats_url: str | None) -> Iterator[tuple[Platform, tuple[str, ...]]]:
    args = (*queue_args(backend, nats_url, stream=f"DRAIN_{uuid.uuid4().hex[:8]}"), *FAST_QUEUE, "--queue-lease", "60s")
    platform = Platform(tmp_path / "state", (*args, "--no-queue-worker")).start()
    try:
        platform.deploy("slow", platform.write_function(tmp_path, "slow", ECHO), env={"SLEEP": "1.5"})
        yield platform, args
    finally:
        platform.close()


def test_sigterm_lets_in_flight_jobs_finish(
    slow_gateway: tuple[Platform, tuple[str, ...]], receiver: CallbackReceiver, tmp_path: Path
) -> None:
    platform, args = slow_gateway
    worker = Worker(platform, args, tmp_path / "worker.log").start()
    try:
        ids = [submit(platform, "slow", b"x", callback=receiver.url).headers["X-Call-Id"] for _ in range(3)]
        wait_for(lambda: _started(platform, "slow") >= 3, 30, what="the jobs to start")
        assert worker.stop(signal.SIGTERM) == 0
        # The worker exited only after the three callbacks went out.
        assert receiver.ids() >= set(ids)
    finally:
        worker.stop(signal.SIGKILL)


def test_jobs_past_the_drain_timeout_go_back_to_the_queue_at_once(
    slow_gateway: tuple[Platform, tuple[str, ...]], receiver: CallbackReceiver, tmp_path: Path
) -> None:
    platform, args = slow_gateway
    impatient = Worker(platform, (*args, "--queue-drain-timeout", "0"), tmp_path / "w1.log").start()
    after = Worker(platform, args, tmp_path / "w2.log")
    try:
        call_id = submit(platform, "slow", b"x", callback=receiver.url).headers["X-Call-Id"]
        wait_for(lambda: _started(platform, "slow") >= 1, 30, what="the job to start")
        began = time.monotonic()
        assert impatient.stop(signal.SIGTERM) == 0
        assert receiver.of(call_id) == []
        after.start()
        receiver.wait_all([call_id], timeout=30)
        # Released, not left to its 60 s lease.
        assert time.monotonic() - began < 30
    finally:
        impatient.stop(signal.SIGKILL)
        after.stop(signal.SIGKILL)


def test_two_nats_workers_share_the_jobs_without_double_processing(
    tmp_path: Path, nats_server: NatsServer, receiver: CallbackReceiver
) -> None:
    args = (*queue_args("nats", nats_server.url, stream="SHARED"), *FAST_QUEUE, "--queue-lease", "30s")
    platform = Platform(tmp_path / "state", (*args, "--no-queue-worker")).start()
    workers = [Worker(platform, args, tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        platform.deploy("echo", platform.write_function(tmp_path, "echo", ECHO), env={"SLEEP": "0.02"})
        for w in workers:
            w.start()
        # The first job makes echo's consumer; then both workers must be pulling from it before
        # the 300 go in (a worker finds a new consumer on its next look, up to 1 s later, and a
        # loaded machine makes that later: the other could take every job meanwhile).
        first = submit(platform, "echo", b"s", callback=receiver.url).headers["X-Call-Id"]
        receiver.wait_all([first], timeout=60)
        wait_for(lambda: _pulls_waiting(nats_server.url, "SHARED", "fn-echo") > 16, 30,
                 what="both workers to pull echo's jobs (16 pulls each)")
        with httpx.Client(timeout=30) as client:
            ids = [submit(platform, "echo", b"s", callback=receiver.url, client=client).headers["X-Call-Id"]
                   for _ in range(300)]
        receiver.wait_all(ids, timeout=60)
        per_call = Counter(c.call_id for c in receiver.calls if c.call_id != first)
        assert set(per_call) == set(ids)
        assert max(per_call.values()) == 1  # each job ran once
        per_worker = Counter(c.worker for c in receiver.calls)
        assert len(per_worker) == 2 and min(per_worker.values()) >= 30, per_worker
    finally:
        for w in workers:
            w.stop(signal.SIGKILL)
        platform.close()
