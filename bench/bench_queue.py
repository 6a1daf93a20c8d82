#!/usr/bin/env python3
"""The async-invocation benchmark: how fast the queue takes, runs and calls back jobs.

    python bench/bench_queue.py [--jobs N] [--backend sqlite|nats ...]

For each queue backend (sqlite; nats when nats-server is on PATH) it starts, on 127.0.0.1, a
gateway with a fresh state directory (and a fresh nats-server -js), deploys a no-op
python3-flask function and measures:

1. accepted/s: POST /async-function with 32 clients, no worker running (the queue only fills);
2. completed/s: a ``streamfaas queue-worker`` started on that backlog, until every callback came
   (next to sync/s: the same function called synchronously by 32 clients, the ceiling);
3. submit → callback latency p50/p99, jobs submitted at a steady rate into an idle worker.

Prints a table and writes bench/results/queue.json. Every process it starts is stopped in
``finally``; every loop is bounded by a job count and a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results" / "queue.json"
sys.path.insert(0, str(BENCH))

from benchlib import machine, write_results  # noqa: E402

NOOP = "def handle(req):\n    return ''\n"
CLIENTS = 32
WORKER_ARGS = ("--queue-concurrency", "32", "--queue-lease", "30s")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamfaas.cli", *args]


def wait_file(path: Path, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.02)
    return path.read_text().strip()


def stop(proc: subprocess.Popen[bytes] | None, group: bool = True) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        proc.wait(5)
    except ProcessLookupError:
        pass


@contextmanager
def nats_server(root: Path) -> Iterator[str]:
    binary = shutil.which("nats-server")
    assert binary is not None
    ports = root / "ports"
    ports.mkdir(parents=True)
    with open(root / "nats.log", "wb") as log:
        proc = subprocess.Popen([binary, "-js", "-sd", str(root / "js"), "-a", "127.0.0.1", "-p", "-1",
                                 "--ports_file_dir", str(ports)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not list(ports.glob("*.ports")):
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.02)
        time.sleep(0.05)  # the file is written in one go, but let it land
        yield str(json.loads(next(ports.glob("*.ports")).read_text())["nats"][0])
    finally:
        stop(proc, group=False)


@contextmanager
def gateway(state: Path, queue_args: tuple[str, ...]) -> Iterator[tuple[str, dict[str, str]]]:
    state.mkdir(parents=True)
    port_file = state / "gateway.port"
    with open(state / "gateway.log", "wb") as log:
        proc = subprocess.Popen(cli("--state-dir", str(state), "gateway", "--port", "0", "--port-file", str(port_file),
                                    "--no-sandbox", "--no-queue-worker", *queue_args),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{wait_file(port_file, proc, 'the gateway')}"
        password = (state / "auth" / "admin-password").read_text().strip()
        token = base64.b64encode(f"admin:{password}".encode()).decode()
        yield url, {"Authorization": f"Basic {token}"}
    finally:
        stop(proc)


@contextmanager
def worker(state: Path, url: str, queue_args: tuple[str, ...]) -> Iterator[None]:
    with open(state / "worker.log", "ab") as log:
        proc = subprocess.Popen(cli("queue-worker", "--gateway", url, "--state-dir", str(state), *queue_args),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        yield
    finally:
        stop(proc)


def deploy_noop(state: Path, tmp: Path, url: str, auth: dict[str, str]) -> None:
    from streamfaas.provider.images import ImageStore

    handler = tmp / "noop"
    handler.mkdir(exist_ok=True)
    (handler / "handler.py").write_text(NOOP)
    (handler / "requirements.txt").write_text("")
    ImageStore(state / "images").build("noop:latest", "python3-flask", handler)

    async def post() -> None:
        async with aiohttp.ClientSession(headers=auth) as s:
            body = {"service": "noop", "image": "noop:latest"}
            async with s.post(f"{url}/system/functions", json=body) as r:
                assert r.status == 202, await r.text()
            for _ in range(600):
                async with s.get(f"{url}/system/function/noop") as r:
                    if (await r.json())["availableReplicas"] >= 1:
                        return
                await asyncio.sleep(0.05)
            raise RuntimeError("noop did not become ready")

    asyncio.run(post())


class Receiver:
    """The callback URL: records when each call id's callback arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.duplicates = 0
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        call_id = request.headers.get("X-Call-Id", "")
        if call_id in self.arrived:
            self.duplicates += 1
        else:
            self.arrived[call_id] = time.monotonic()
        self.changed.set()
        return web.Response()

    async def wait(self, call_ids: list[str], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while any(c not in self.arrived for c in call_ids):
                self.changed.clear()
                await self.changed.wait()


async def start_receiver() -> tuple[Receiver, web.AppRunner, str]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/cb", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return receiver, runner, f"http://127.0.0.1:{port}/cb"


async def submit_many(url: str, callback: str, ids: list[str], sent: dict[str, float], clients: int) -> None:
    queue = iter(ids)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def client() -> None:
            for call_id in queue:
                sent[call_id] = time.monotonic()
                async with s.post(f"{url}/async-function/noop", data=b"{}",
                                  headers={"X-Call-Id": call_id, "X-Callback-Url": callback}) as r:
                    assert r.status == 202, await r.text()

        await asyncio.gather(*(client() for _ in range(clients)))


async def submit_steady(url: str, callback: str, ids: list[str], sent: dict[str, float], rate: float) -> None:
    async with aiohttp.ClientSession() as s:
        async def one(call_id: str) -> None:
            sent[call_id] = time.monotonic()
            async with s.post(f"{url}/async-function/noop", data=b"{}",
                              headers={"X-Call-Id": call_id, "X-Callback-Url": callback}) as r:
                assert r.status == 202, await r.text()

        start = time.monotonic()
        tasks = []
        for i, call_id in enumerate(ids):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(call_id)))
        await asyncio.gather(*tasks)


async def sync_rate(url: str, requests: int, clients: int) -> float:
    """The same no-op called synchronously: the ceiling a worker's completed/s can reach."""
    left = iter(range(requests))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def client() -> None:
            for _ in left:
                async with s.post(f"{url}/function/noop", data=b"{}") as r:
                    await r.read()
                    assert r.status == 200

        began = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        return requests / (time.monotonic() - began)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_backend(backend: str, jobs: int, latency_jobs: int, rate: float, tmp: Path) -> dict[str, Any]:
    root = tmp / backend
    state = root / "state"
    with contextmanager_for(backend, root) as queue_args:
        args = (*queue_args, *WORKER_ARGS)
        with gateway(state, args) as (url, auth):
            deploy_noop(state, root, url, auth)

            async def accept_then_complete() -> dict[str, float]:
                receiver, runner, callback = await start_receiver()
                try:
                    sync = await sync_rate(url, jobs, CLIENTS)
                    ids = [uuid.uuid4().hex for _ in range(jobs)]
                    sent: dict[str, float] = {}
                    began = time.monotonic()
                    await submit_many(url, callback, ids, sent, CLIENTS)
                    accepted = jobs / (time.monotonic() - began)
                    with worker(state, url, args):
                        began = time.monotonic()
                        await receiver.wait(ids, timeout=600)
                        completed = jobs / (time.monotonic() - began)
                        # Latency into an idle worker (the backlog is done).
                        lat_ids = [uuid.uuid4().hex for _ in range(latency_jobs)]
                        lat_sent: dict[str, float] = {}
                        await submit_steady(url, callback, lat_ids, lat_sent, rate)
                        await receiver.wait(lat_ids, timeout=120)
                    latencies = [(receiver.arrived[c] - lat_sent[c]) * 1000 for c in lat_ids]
                    return {
                        "sync_per_s": round(sync, 1),
                        "accepted_per_s": round(accepted, 1),
                        "completed_per_s": round(completed, 1),
                        "callback_p50_ms": round(pct(latencies, 0.50), 2),
                        "callback_p99_ms": round(pct(latencies, 0.99), 2),
                        "duplicate_callbacks": receiver.duplicates,
                    }
                finally:
                    await runner.cleanup()

            return asyncio.run(accept_then_complete())


@contextmanager
def contextmanager_for(backend: str, root: Path) -> Iterator[tuple[str, ...]]:
    if backend == "nats":
        with nats_server(root / "nats") as nats_url:
            yield ("--queue", "nats", "--nats-url", nats_url)
    else:
        yield ("--queue", "sqlite")


def _nats_version() -> str:
    if not shutil.which("nats-server"):
        return ""
    return subprocess.run(["nats-server", "--version"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000, help="backlog size for accepted/s and completed/s")
    parser.add_argument("--latency-jobs", type=int, default=500, help="jobs for the latency run")
    parser.add_argument("--rate", type=float, default=100.0, help="jobs/s submitted in the latency run")
    parser.add_argument("--backend", action="append", choices=["sqlite", "nats"], help="default: both (nats if installed)")
    args = parser.parse_args()
    backends = args.backend or ["sqlite", *(["nats"] if shutil.which("nats-server") else [])]
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="streamfaas-bench-queue-"))
    results: dict[str, Any] = {}
    try:
        for backend in backends:
            print(f"bench_queue: {backend} …", file=sys.stderr, flush=True)
            results[backend] = bench_backend(backend, args.jobs, args.latency_jobs, args.rate, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'queue':<8}{'sync/s':>8}{'accepted/s':>12}{'completed/s':>13}{'callback p50':>14}{'callback p99':>14}")
    for backend, r in results.items():
        print(f"{backend:<8}{r['sync_per_s']:>8.0f}{r['accepted_per_s']:>12.0f}{r['completed_per_s']:>13.0f}"
              f"{r['callback_p50_ms']:>11.1f} ms{r['callback_p99_ms']:>11.1f} ms")
    out = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine(nats_server=_nats_version()),
        "settings": {"jobs": args.jobs, "clients": CLIENTS, "latency_jobs": args.latency_jobs, "rate_per_s": args.rate,
                     "worker": " ".join(WORKER_ARGS), "function": "python3-flask no-op, 1 replica"},
        "results": results,
    }
    write_results(RESULTS, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
