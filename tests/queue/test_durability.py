"""At-least-once across crashes: kill -9 the worker and the gateway mid-run, restart, lose nothing."""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from queue_fixture import ECHO, FAST_QUEUE, CallbackReceiver, Worker, queue_args, submit

from platform_fixture import Platform, wait_for

JOBS = 1000


def _submit_all(platform: Platform, callback: str) -> list[str]:
    def batch(part: range) -> list[str]:
        with httpx.Client(timeout=30) as client:
            ids = []
            for i in part:
                r = submit(platform, "echo", f"job {i}".encode(), callback=callback, client=client)
                assert r.status_code == 202, r.text
                ids.append(r.headers["X-Call-Id"])
            return ids

    with ThreadPoolExecutor(8) as pool:
        parts = pool.map(batch, [range(i, JOBS, 8) for i in range(8)])
        return [call_id for part in parts for call_id in part]


def test_no_job_is_lost_when_worker_and_gateway_are_killed(
    tmp_path: Path, backend: str, nats_url: str | None, receiver: CallbackReceiver
) -> None:
    args = (*queue_args(backend, nats_url, stream=f"KILL_{uuid.uuid4().hex[:8]}"), *FAST_QUEUE)
    platform = Platform(tmp_path / "state", (*args, "--no-queue-worker")).start()
    worker = Worker(platform, args, tmp_path / "worker.log")
    try:
        platform.deploy("echo", platform.write_function(tmp_path, "echo", ECHO), env={"SLEEP": "0.01"})
        ids = _submit_all(platform, receiver.url)
        assert len(set(ids)) == JOBS
        worker.start()
        wait_for(lambda: len(receiver.ids()) >= 150, 60, what="150 callbacks")
        worker.stop(signal.SIGKILL)
        platform.stop(signal.SIGKILL)
        done_before = len(receiver.ids())
        assert done_before < JOBS, "the run ended before the kill; nothing was tested"

        platform.start()
        worker.start()
        receiver.wait_all(ids, timeout=120)
        counts = Counter(c.call_id for c in receiver.calls)
        assert set(counts) == set(ids)  # every job once or more, none lost
        assert all(c.function_status == "200" for c in receiver.calls)
        # Only jobs in flight at the kill may run twice.
        assert sum(n - 1 for n in counts.values()) <= 16 * 2 + 10
    finally:
        worker.stop(signal.SIGKILL)
        platform.close()
