"""At-least-once, edge by edge: what is retried (a failing callback, a 429) and what is not (a
4xx), the backoff's bounds, repeated call ids, ``queue retry --all``, the callback's headers, the
credentials never stored, and the metrics of dead letters and completions.

The functions here keep their state in memory and report it in their answer: a sandboxed
function sees none of the test's files.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from queue_fixture import (
    HANG,
    LOOPBACK_CALLBACKS,
    Callback,
    CallbackReceiver,
    Worker,
    queue_args,
    submit,
)

from platform_fixture import Platform, streamfaas_cmd, wait_for
from streamfaas.config import QueueConfig
from streamfaas.queue import FunctionSlots, JobQueue, Lease
from streamfaas.queue.sqlite import SqliteQueue
from streamfaas.queue.worker import backoff_delay

BACKOFF = 0.25
MAX_RETRIES = 3  # 4 attempts in all
CALLBACK_TIMEOUT = 1.0
QUEUE = (
    "--queue-backoff", f"{BACKOFF * 1000:g}ms", "--queue-backoff-max", f"{2 * BACKOFF * 1000:g}ms",
    "--queue-lease", "5s", "--queue-drain-timeout", "5s", "--queue-max-retries", str(MAX_RETRIES),
    "--queue-concurrency", "16", "--queue-callback-timeout", f"{CALLBACK_TIMEOUT * 1000:g}ms",
    *LOOPBACK_CALLBACKS,
)

# Answers each attempt of a call id with the next status in X-Answers (the last one repeats),
# and reports which attempt it was, when each began, and the headers it saw.
SCRIPTED = """
import json, threading, time
from flask import request

_lock = threading.Lock()
_began = {}  # call id -> the time each of its attempts began

def handle(req):
    call_id = request.headers.get("X-Call-Id", "")
    with _lock:
        times = _began.setdefault(call_id, [])
        times.append(time.time())
        times = list(times)
    answers = [int(a) for a in request.headers.get("X-Answers", "200").split(",")]
    status = answers[min(len(times), len(answers)) - 1]
    seen = {h: request.headers.get(h) for h in ("Authorization", "Cookie", "Proxy-Authorization", "X-Callback-Url", "X-Custom")}
    return json.dumps({"attempt": len(times), "began": times, "body": req, "headers": seen}), status
"""
FUNCTIONS = ("scripted", "twin", "metered")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, backend: str, nats_url: str | None) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("at_least_once")
    p = Platform(root / "state", (*queue_args(backend, nats_url, stream=f"ALO_{uuid.uuid4().hex[:8]}"), *QUEUE)).start()
    try:
        for name in FUNCTIONS:
            p.deploy(name, p.write_function(root, name, SCRIPTED), wait=False)
        for name in FUNCTIONS:
            p.wait_ready(name)
        yield p
    finally:
        p.close()


def new_id(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


def report(callback: Callback) -> dict[str, Any]:
    """What the function said about the attempt that was called back."""
    data: dict[str, Any] = json.loads(callback.body)
    return data


def queued(platform: Platform, *, failed: bool) -> set[str]:
    r = platform.http.get(f"{platform.url}/system/queue", params={"failed": str(failed).lower(), "limit": "1000"})
    r.raise_for_status()
    return {job["callId"] for job in r.json()["jobs"]}


def scrape(platform: Platform) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on /metrics, by name and labels."""
    text = httpx.get(f"{platform.url}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# ---- the backoff ----------------------------------------------------------------------------
def test_backoff_doubles_with_20_percent_jitter_up_to_the_cap() -> None:
    config = QueueConfig(backoff=0.5, backoff_max=10.0)
    for failed_before in range(8):
        nominal = min(10.0, 0.5 * 2**failed_before)  # 0.5, 1, 2, 4, 8, then the cap: 10, 10, 10
        delays = [backoff_delay(config, failed_before) for _ in range(2000)]
        assert min(delays) >= 0.8 * nominal - 1e-9, (failed_before, min(delays))
        assert max(delays) <= 1.2 * nominal + 1e-9, (failed_before, max(delays))
        # Jittered across the whole ±20%, around the nominal delay.
        assert min(delays) < 0.85 * nominal and max(delays) > 1.15 * nominal, failed_before
        assert abs(sum(delays) / len(delays) - nominal) < 0.02 * nominal, failed_before
    for failed_before in (62, 63, 1000):  # however many attempts failed, the cap holds
        assert all(8.0 <= backoff_delay(config, failed_before) <= 12.0 for _ in range(200))


def test_retried_attempts_wait_the_backoff_and_it_doubles(gateway: Platform, receiver: CallbackReceiver) -> None:
    call_id = new_id("backoff")
    submit(gateway, "scripted", callback=receiver.url, call_id=call_id, headers={"X-Answers": "503,503,200"})
    receiver.wait_all([call_id], timeout=30)
    [callback] = receiver.of(call_id)
    first, second, third = report(callback)["began"]
    # Each retry comes after its backoff less the jitter: 0.8 × 250 ms, then 0.8 × 500 ms,
    # which only a doubled delay reaches (250 ms + 20% is 300 ms).
    assert second - first >= 0.8 * BACKOFF
    assert third - second >= 0.8 * 2 * BACKOFF


# ---- what is retried, and what is not -------------------------------------------------------
def test_callback_answering_non_2xx_is_retried_without_running_the_function_again(
    gateway: Platform, receiver: CallbackReceiver
) -> None:
    call_id = new_id("cb-refused")
    receiver.script(call_id, [500, 404])
    submit(gateway, "scripted", b"x", callback=receiver.url, call_id=call_id)
    receiver.wait_all([call_id], timeout=30)
    attempts = receiver.attempts_of(call_id)
    assert [c.answered for c in attempts] == [500, 404, 200]
    # Each retry sent the one answer the function gave (its first run), and only the last
    # callback was taken: a receiver that was down does not make the function run, and cost, again.
    assert [report(c)["attempt"] for c in attempts] == [1, 1, 1]
    assert len(receiver.of(call_id)) == 1
    # The callback's retries wait the job's backoff, doubling: 0.8 × 250 ms, then 0.8 × 500 ms.
    first, second, third = (c.received for c in attempts)
    assert second - first >= 0.8 * BACKOFF
    assert third - second >= 0.8 * 2 * BACKOFF
    wait_for(lambda: call_id not in queued(gateway, failed=False), 20, what="the job to leave the queue")


def test_callback_retries_share_the_jobs_retry_budget_with_the_function(
    gateway: Platform, receiver: CallbackReceiver
) -> None:
    call_id = new_id("cb-budget")
    receiver.script(call_id, [500] * (MAX_RETRIES + 2))  # more refusals than the job has retries
    submit(gateway, "scripted", b"x", callback=receiver.url, call_id=call_id, headers={"X-Answers": "503,200"})
    wait_for(lambda: call_id in queued(gateway, failed=True), 30, what="the job to be dead-lettered")
    r = gateway.http.get(f"{gateway.url}/system/queue", params={"failed": "true", "limit": "1000"})
    [job] = [j for j in r.json()["jobs"] if j["callId"] == call_id]
    # One retry went to the function's 503; the callback got the rest: MAX_RETRIES tries in all,
    # each with the second run's answer, and the function was not run a third time.
    attempts = receiver.attempts_of(call_id)
    assert len(attempts) == MAX_RETRIES
    assert {report(c)["attempt"] for c in attempts} == {2}
    assert job["lastError"].endswith(f"({MAX_RETRIES} tries with one answer of the function, not run again)")


def test_callback_timing_out_is_retried(gateway: Platform, receiver: CallbackReceiver) -> None:
    call_id = new_id("cb-slow")
    receiver.script(call_id, [HANG])  # the first callback is never answered
    submit(gateway, "scripted", b"x", callback=receiver.url, call_id=call_id)
    receiver.wait_all([call_id], timeout=30)
    attempts = receiver.attempts_of(call_id)
    assert [c.answered for c in attempts] == [HANG, 200]
    assert [report(c)["attempt"] for c in attempts] == [1, 1]


def test_function_answering_429_is_retried(gateway: Platform, receiver: CallbackReceiver) -> None:
    call_id = new_id("busy")
    submit(gateway, "scripted", b"x", callback=receiver.url, call_id=call_id, headers={"X-Answers": "429,200"})
    receiver.wait_all([call_id], timeout=30)
    # The 429 was not called back: the only callback is the second attempt's 200.
    [callback] = receiver.attempts_of(call_id)
    assert callback.function_status == "200"
    assert report(callback)["attempt"] == 2


@pytest.mark.parametrize("status", [404, 400])
def test_function_answering_4xx_is_called_back_and_not_retried(
    gateway: Platform, receiver: CallbackReceiver, status: int
) -> None:
    call_id = new_id(f"answer-{status}")
    submit(gateway, "scripted", b"x", callback=receiver.url, call_id=call_id, headers={"X-Answers": f"{status},200"})
    receiver.wait_all([call_id], timeout=30)
    # Once the job has left the queue (not waiting to retry, not dead-lettered) it cannot run again.
    wait_for(lambda: call_id not in queued(gateway, failed=False), 20, what="the job to leave the queue")
    assert call_id not in queued(gateway, failed=True)
    [callback] = receiver.attempts_of(call_id)
    assert callback.function_status == str(status)
    assert report(callback)["attempt"] == 1


# ---- submissions and callbacks ------------------------------------------------------------------
def test_repeated_call_id_is_a_second_job(gateway: Platform, receiver: CallbackReceiver) -> None:
    call_id = new_id("twice")
    for body in (b"first", b"second"):
        r = submit(gateway, "scripted", body, callback=receiver.url, call_id=call_id)
        assert r.status_code == 202 and r.headers["X-Call-Id"] == call_id
    wait_for(lambda: len(receiver.of(call_id)) >= 2, 30, what="two callbacks with one call id")
    callbacks = receiver.of(call_id)
    assert sorted(report(c)["body"] for c in callbacks) == ["first", "second"]
    assert {c.function_status for c in callbacks} == {"200"}


def test_callback_names_its_function(gateway: Platform, receiver: CallbackReceiver) -> None:
    ids = {name: submit(gateway, name, b"x", callback=receiver.url).headers["X-Call-Id"] for name in ("scripted", "twin")}
    receiver.wait_all(ids.values(), timeout=30)
    for name, call_id in ids.items():
        [callback] = receiver.of(call_id)
        assert callback.function_name == name


def test_queue_retry_all_runs_every_dead_letter_again(gateway: Platform, receiver: CallbackReceiver) -> None:
    # `retry --all` takes every dead letter: start from none, whatever other tests left there.
    purged = subprocess.run(streamfaas_cmd("queue", "purge", "--failed", "--yes"), capture_output=True, text=True,
                            env=gateway.env(), timeout=60)
    assert purged.returncode == 0, purged.stderr
    # Both fail all their attempts; the fifth (the first after the retry) succeeds.
    answers = {"X-Answers": ",".join(["503"] * (MAX_RETRIES + 1) + ["200"])}
    ids = {name: new_id(f"dead-{name}") for name in ("scripted", "twin")}
    for name, call_id in ids.items():
        submit(gateway, name, b"x", callback=receiver.url, call_id=call_id, headers=answers)
    wait_for(lambda: queued(gateway, failed=True) == set(ids.values()), 30, what="both jobs to be dead-lettered")
    assert receiver.attempts_of(ids["scripted"]) == receiver.attempts_of(ids["twin"]) == []

    out = subprocess.run(streamfaas_cmd("queue", "retry", "--all"), capture_output=True, text=True,
                         env=gateway.env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "retried 2 jobs" in out.stderr
    receiver.wait_all(ids.values(), timeout=30)
    for call_id in ids.values():
        [callback] = receiver.of(call_id)
        assert callback.function_status == "200"
        assert report(callback)["attempt"] == MAX_RETRIES + 2
    assert queued(gateway, failed=True) == set()


# ---- metrics -------------------------------------------------------------------------------
def test_dead_letters_and_completions_are_counted(gateway: Platform, receiver: CallbackReceiver) -> None:
    fn = (("function_name", "metered"),)
    doomed = new_id("doomed")
    submit(gateway, "metered", b"x", callback=receiver.url, call_id=doomed, headers={"X-Answers": "503"})
    done = [submit(gateway, "metered", b"x", callback=receiver.url).headers["X-Call-Id"] for _ in range(2)]
    receiver.wait_all(done, timeout=30)
    try:
        wait_for(lambda: doomed in queued(gateway, failed=True), 30, what="the job to be dead-lettered")

        def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            samples = scrape(gateway)
            failures = samples.get(("streamfaas_queue_failures_total", fn))
            finished = samples.get(("streamfaas_queue_done_seconds_count", fn))
            return samples if (failures, finished) == (1, 2) else None

        samples = wait_for(counted, 20, what="one failure and two completions of 'metered'")
        # Only the two completed jobs are timed, in the histogram's buckets as in its count.
        assert samples[("streamfaas_queue_done_seconds_bucket", (*fn, ("le", "+Inf")))] == 2
        assert samples[("streamfaas_queue_done_seconds_sum", fn)] > 0
        # Counted by function alone (other tests dead-letter jobs of other functions).
        label_names = {tuple(k for k, _ in labels) for name, labels in samples if name == "streamfaas_queue_failures_total"}
        assert label_names == {("function_name",)}
    finally:
        gateway.http.delete(f"{gateway.url}/system/queue", params={"failed": "true"})


# ---- credentials ------------------------------------------------------------------------------
def open_queue(backend: str, nats_url: str | None, stream: str, state_dir: Path) -> JobQueue:
    """The queue the gateway writes, opened by the test itself."""
    if backend == "nats":
        from streamfaas.queue.jetstream import NatsQueue

        assert nats_url is not None
        return NatsQueue(nats_url, stream=stream, lease=5.0, fetch_wait=0.2, discover_interval=0.1)
    return SqliteQueue(state_dir / "queue.db", lease=5.0, poll_interval=0.02)


async def stored_headers(queue: JobQueue) -> dict[str, str]:
    """The headers of the one queued job, as stored; it goes back to the queue untouched."""
    await queue.start()
    try:
        leased: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()

        def deliver(lease: Lease) -> None:
            leased.set_result(lease)
            stop.set()

        consuming = asyncio.create_task(queue.consume(FunctionSlots(1), deliver, stop))
        try:
            async with asyncio.timeout(20):
                lease = await leased
            await lease.release()
        finally:
            stop.set()
            await consuming
        return {k.lower(): v for k, v in lease.job.headers}
    finally:
        await queue.close()


def test_credentials_are_neither_stored_nor_seen_by_the_function(
    tmp_path: Path, backend: str, nats_url: str | None, receiver: CallbackReceiver
) -> None:
    stream = new_id("CREDS").upper().replace("-", "_")
    args = (*queue_args(backend, nats_url, stream=stream), *QUEUE)
    platform = Platform(tmp_path / "state", (*args, "--no-queue-worker")).start()
    worker = Worker(platform, args, tmp_path / "worker.log")
    try:
        platform.deploy("scripted", platform.write_function(tmp_path, "scripted", SCRIPTED))
        secrets = {"Authorization": "Bearer s3cret-a", "Cookie": "s=s3cret-c", "Proxy-Authorization": "Basic s3cret-p"}
        r = submit(platform, "scripted", b"x", callback=receiver.url, headers={**secrets, "X-Custom": "kept"})
        assert r.status_code == 202
        call_id = r.headers["X-Call-Id"]

        listing = platform.http.get(f"{platform.url}/system/queue")
        assert call_id in listing.text and "s3cret" not in listing.text
        stored = asyncio.run(stored_headers(open_queue(backend, nats_url, stream, platform.state_dir)))
        assert stored.get("x-custom") == "kept"
        assert {"authorization", "cookie", "proxy-authorization", "x-callback-url"}.isdisjoint(stored)
        assert not [v for v in stored.values() if "s3cret" in v]

        worker.start()
        receiver.wait_all([call_id], timeout=30)
        [callback] = receiver.of(call_id)
        seen = report(callback)["headers"]
        # Nor the receiver's URL, whose credentials (user:password@, a token) are not the function's.
        assert seen == {"Authorization": None, "Cookie": None, "Proxy-Authorization": None, "X-Callback-Url": None,
                        "X-Custom": "kept"}
    finally:
        worker.stop(signal.SIGKILL)
        platform.close()
