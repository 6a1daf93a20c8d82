#!/usr/bin/env python3
"""The async-invocation benchmark: how fast the queue takes, runs and calls back jobs.

    python bench/bench_queue.py [--jobs N] [--backend sqlite|nats]... [--out PATH]

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
import json
import shutil
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
RESULTS = BENCH / "results" / "queue.json"
sys.path.insert(0, str(BENCH))

from benchlib import Api, Gateway, Run, build_image, cli, pct, stop_group  # noqa: E402
from cpuwatch import CpuWatch  # noqa: E402

NOOP = "def handle(req):\n    return ''\n"
CLIENTS = 32
# The callback receiver is this bench, on 127.0.0.1: callbacks go only to public addresses unless allowed.
WORKER_ARGS = ("--queue-concurrency", "32", "--queue-lease", "30s", "--callback-allow", "127.0.0.1/32")


@contextmanager
def nats_server(root: Path) -> Iterator[str]:
    binary = shutil.which("nats-server")
    assert binary is not None
    ports = root / "ports"
    ports.mkdir(parents=True)
    with open(root / "nats.log", "wb") as log:
        argv = [binary, "-js", "-sd", str(root / "js"), "-a", "127.0.0.1", "-p", "-1"]
        proc = subprocess.Popen(
            [*argv, "--ports_file_dir", str(ports)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        while not list(ports.glob("*.ports")):
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.02)
        time.sleep(0.05)  # the file is written in one go, but let it land
        yield str(json.loads(next(ports.glob("*.ports")).read_text())["nats"][0])
    finally:
        stop_group(proc)


@contextmanager
def worker(state: Path, url: str, queue_args: tuple[str, ...]) -> Iterator[None]:
    with open(state / "worker.log", "ab") as log:
        proc = subprocess.Popen(
            cli("queue-worker", "--gateway", url, "--state-dir", str(state), *queue_args),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield
    finally:
        stop_group(proc)


async def deploy_noop(gw: Gateway, tmp: Path) -> None:
    handler = tmp / "noop"
    handler.mkdir(exist_ok=True)
    (handler / "handler.py").write_text(NOOP)
    (handler / "requirements.txt").write_text("")
    build_image(gw, "noop", handler)
    async with aiohttp.ClientSession() as session:
        api = Api(session, gw)
        await api.deploy({"service": "noop", "image": "noop:latest"})
        await api.wait_ready("noop", timeout=30)


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


async def submit_many(
    url: str, callback: str, ids: list[str], sent: dict[str, float], clients: int
) -> None:
    queue = iter(ids)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def client() -> None:
            for call_id in queue:
                sent[call_id] = time.monotonic()
                async with s.post(
                    f"{url}/async-function/noop",
                    data=b"{}",
                    headers={"X-Call-Id": call_id, "X-Callback-Url": callback},
                ) as r:
                    assert r.status == 202, await r.text()

        await asyncio.gather(*(client() for _ in range(clients)))


async def submit_steady(
    url: str, callback: str, ids: list[str], sent: dict[str, float], rate: float
) -> None:
    async with aiohttp.ClientSession() as s:

        async def one(call_id: str) -> None:
            sent[call_id] = time.monotonic()
            async with s.post(
                f"{url}/async-function/noop",
                data=b"{}",
                headers={"X-Call-Id": call_id, "X-Callback-Url": callback},
            ) as r:
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


def bench_backend(
    backend: str, args: argparse.Namespace, tmp: Path, watch: CpuWatch
) -> dict[str, Any]:
    root = tmp / backend
    with queue_flags(backend, root) as queue_args:
        flags = (*queue_args, *WORKER_ARGS)
        gw = Gateway(root / "state", "--no-sandbox", "--no-queue-worker", *flags)
        try:
            gw.start()

            async def measure() -> dict[str, Any]:
                await deploy_noop(gw, root)
                receiver, runner, callback = await start_receiver()
                try:
                    watch.mark(f"{backend}: sync")
                    sync = await sync_rate(gw.url, args.jobs, CLIENTS)
                    watch.mark(f"{backend}: accepted")
                    ids = [uuid.uuid4().hex for _ in range(args.jobs)]
                    sent: dict[str, float] = {}
                    began = time.monotonic()
                    await submit_many(gw.url, callback, ids, sent, CLIENTS)
                    accepted = args.jobs / (time.monotonic() - began)
                    with worker(gw.state_dir, gw.url, flags):
                        watch.mark(f"{backend}: completed")
                        began = time.monotonic()
                        await receiver.wait(ids, timeout=600)
                        completed = args.jobs / (time.monotonic() - began)
                        # Latency into an idle worker (the backlog is done).
                        watch.mark(f"{backend}: callback latency")
                        lat_ids = [uuid.uuid4().hex for _ in range(args.latency_jobs)]
                        lat_sent: dict[str, float] = {}
                        await submit_steady(gw.url, callback, lat_ids, lat_sent, args.rate)
                        await receiver.wait(lat_ids, timeout=120)
                        watch.mark("between")
                    latencies = [(receiver.arrived[c] - lat_sent[c]) * 1000 for c in lat_ids]
                    return {
                        "sync_per_s": round(sync, 1),
                        "accepted_per_s": round(accepted, 1),
                        "completed_per_s": round(completed, 1),
                        "callback_p50_ms": round(pct(latencies, 50), 2),
                        "callback_p99_ms": round(pct(latencies, 99), 2),
                        "duplicate_callbacks": receiver.duplicates,
                    }
                finally:
                    await runner.cleanup()

            return asyncio.run(measure())
        finally:
            gw.stop()


@contextmanager
def queue_flags(backend: str, root: Path) -> Iterator[tuple[str, ...]]:
    if backend == "nats":
        with nats_server(root / "nats") as nats_url:
            yield ("--queue", "nats", "--nats-url", nats_url)
    else:
        yield ("--queue", "sqlite")


def _nats_version() -> str:
    if not shutil.which("nats-server"):
        return ""
    return subprocess.run(
        ["nats-server", "--version"], capture_output=True, text=True
    ).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--jobs", type=int, default=3000, help="backlog size for accepted/s and completed/s"
    )
    parser.add_argument("--latency-jobs", type=int, default=500, help="jobs for the latency run")
    parser.add_argument(
        "--rate", type=float, default=100.0, help="jobs/s submitted in the latency run"
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=["sqlite", "nats"],
        help="repeatable (default: sqlite, and nats when nats-server is on PATH)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="default: %(default)s")
    args = parser.parse_args()
    backends = args.backend or ["sqlite", *(["nats"] if shutil.which("nats-server") else [])]
    run = Run()
    watch = CpuWatch()
    tmp = Path(tempfile.mkdtemp(prefix="streamfaas-bench-queue-"))
    results: dict[str, Any] = {}
    try:
        for backend in backends:
            print(f"bench_queue: {backend} …", file=sys.stderr, flush=True)
            results[backend] = bench_backend(backend, args, tmp, watch)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\n{'queue':<8}{'sync/s':>8}{'accepted/s':>12}{'completed/s':>13}"
        f"{'callback p50':>14}{'callback p99':>14}"
    )
    for backend, r in results.items():
        print(
            f"{backend:<8}{r['sync_per_s']:>8.0f}{r['accepted_per_s']:>12.0f}"
            f"{r['completed_per_s']:>13.0f}{r['callback_p50_ms']:>11.1f} ms"
            f"{r['callback_p99_ms']:>11.1f} ms"
        )
    body = {
        "settings": {
            "jobs": args.jobs,
            "clients": CLIENTS,
            "latency_jobs": args.latency_jobs,
            "rate_per_s": args.rate,
            "worker": " ".join(WORKER_ARGS),
            "function": "python3-flask no-op, 1 replica",
        },
        "other_cpu_pct": {
            p: watch.other_pct(p) for p in watch.phases if p.split(":")[0] in results
        },
        "results": results,
    }
    run.write(args.out, body, nats_server=_nats_version())
    return 0


if __name__ == "__main__":
    sys.exit(main())
