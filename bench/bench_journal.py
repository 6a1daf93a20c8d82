#!/usr/bin/env python3
"""What a resumable stream's journal costs (issue 14): added delay per event and gateway
memory per stream, with ``stream_resume`` on and off, in the same run.

    python bench/bench_journal.py [--quick] [--wait-quiet S] [--no-sandbox] [--out PATH]

One gateway, two deployments of bench/core_server.py that differ only in ``stream_resume``:
``sfplain`` (the plain proxy) and ``sfjournal`` (ids added, every chunk into the journal, the
client fed from it). Interleaved rounds of 100 streams × 20 events/s through each give the
per-event delay (client receive − function send); then N idle streams are held through each
and the gateway's RSS growth per stream is read, at first and after each stream has had 20
events in its journal. Prints a table and writes bench/results/journal.json.

Targets: the journal adds ≤ 0.1 ms at p99 per event.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "journal.json"
sys.path.insert(0, str(BENCH))

from benchlib import (  # noqa: E402
    Api,
    Gateway,
    Run,
    Targets,
    build_image,
    client_session,
    cpu_seconds,
    describe_code,
    pct,
    platform_options,
    raise_fd_limit,
    rss_kb,
    step,
)
from core_sections import core_server_folder, extra_env  # noqa: E402
from cpuwatch import wait_quiet  # noqa: E402

KINDS = ("sfplain", "sfjournal")


async def delay_round(session: aiohttp.ClientSession, url: str, streams: int, seconds: float) -> tuple[list[float], int]:
    """Lags (ms) of every event of ``streams`` streams at 20 events/s, recorded once all are open."""
    count = int(seconds / 0.05)
    lags: list[float] = []
    opened = 0
    all_open = asyncio.Event()
    record = False

    async def one() -> None:
        nonlocal opened
        async with session.get(f"{url}/ticks?interval=0.05&count={count}") as resp:
            assert resp.status == 200, resp.status
            chunk = await resp.content.readany()  # ": ok" (and the retry hint), maybe more
            opened += 1
            if opened == streams:
                all_open.set()
            seen, carry = 0, b""
            while chunk:
                # Events that came with ": ok" are read now, not when the next chunk comes (that
                # added up to an interval to their delay: the "stalls" of earlier runs).
                now = time.monotonic_ns()
                *events, carry = (carry + chunk).split(b"\n\n")
                for event in events:
                    line = event.split(b"\n", 1)[0]  # "data: NS N"; the journal's id line follows
                    if line.startswith(b"data: "):
                        seen += 1
                        if record:
                            lags.append((now - int(line[6:].split(b" ")[0])) / 1e6)
                chunk = await resp.content.readany()
            if seen != count:
                raise RuntimeError(f"{url}: {seen} of {count} events")

    async with asyncio.timeout(seconds + 60), asyncio.TaskGroup() as tg:
        for _ in range(streams):
            tg.create_task(one())
        await all_open.wait()
        record = True
    return lags, count * streams


async def hold(session: aiohttp.ClientSession, gw: Gateway, url: str, streams: int) -> dict[str, float]:
    """Hold ``streams`` streams open (1 event every 0.25 s, 20 each): the gateway's RSS growth
    per stream once all are open, and after their 20 events (in the journal, for sfjournal)."""
    gc.collect()
    before = rss_kb(gw.pid)
    opened = 0
    all_open = asyncio.Event()
    finished = 0
    all_done = asyncio.Event()
    release = asyncio.Event()

    async def one() -> None:
        nonlocal opened, finished
        async with session.get(f"{url}/ticks?interval=0.25&count=20") as resp:
            await resp.content.readany()
            opened += 1
            if opened == streams:
                all_open.set()
            data = b""
            while b" 20\n" not in data[-64:] and b" 20\n" not in data:
                chunk = await resp.content.readany()
                if not chunk:
                    break
                data = data[-64:] + chunk
            finished += 1
            if finished == streams:
                all_done.set()
            await release.wait()  # held open: the journal of an ended stream is kept for its window

    async with asyncio.timeout(120), asyncio.TaskGroup() as tg:
        for _ in range(streams):
            tg.create_task(one())
        await all_open.wait()
        at_open = rss_kb(gw.pid)
        await all_done.wait()
        at_end = rss_kb(gw.pid)
        release.set()
    return {"open_kib_per_stream": (at_open - before) / streams, "after_20_events_kib_per_stream": (at_end - before) / streams}


async def deploy(session: aiohttp.ClientSession, gw: Gateway, work: Path, kinds: tuple[str, ...]) -> None:
    folder = core_server_folder(work, "sfstream")
    api = Api(session, gw)
    for kind in kinds:
        build_image(gw, kind, folder)
        # core_server is asyncio: no thread limit; replicas pinned, so none starts mid-round.
        env = {**extra_env(), "heartbeat_interval": "0", "threads": "20000"}
        if kind == "sfjournal":
            env.update(stream_resume="true", resume_window="30s")
        await api.deploy({"service": kind, "image": f"{kind}:latest", "envVars": env,
                          "envProcess": "python function/core_server.py",
                          "labels": {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "1"}})
    for kind in kinds:
        await api.wait_ready(kind)


async def run(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The delay rounds in one gateway; then each kind's memory in a fresh gateway of its own
    (a process's RSS does not shrink after a free, so the second kind would look cheaper)."""
    sandbox = ["--no-sandbox"] if args.no_sandbox else []
    gw = Gateway(work / "state-delay", *sandbox)
    async with client_session() as session:
        try:
            gw.start()
            await deploy(session, gw, work, KINDS)
            gc.collect()
            gc.freeze()  # as bench_core: the client's own collections would show as delay
            rounds = 2 if args.quick else 4
            seconds = 1.0 if args.quick else 1.5
            lags: dict[str, list[float]] = {k: [] for k in KINDS}
            cpu: dict[str, float] = dict.fromkeys(KINDS, 0.0)
            events: dict[str, int] = dict.fromkeys(KINDS, 0)
            step("warm-up")
            for kind in KINDS:
                await delay_round(session, gw.function_url(kind), args.streams, 1.0)
            for r in range(rounds):
                for kind in (KINDS if r % 2 == 0 else tuple(reversed(KINDS))):
                    step(f"delay round {r + 1}/{rounds}: {kind}")
                    used = cpu_seconds(gw.pid)
                    got, sent = await delay_round(session, gw.function_url(kind), args.streams, seconds)
                    cpu[kind] += cpu_seconds(gw.pid) - used
                    lags[kind] += got
                    events[kind] += sent
        finally:
            gw.stop()
        memory = {}
        for kind in KINDS:
            step(f"memory: {args.hold:,} streams through {kind}, in a gateway of its own")
            mgw = Gateway(work / f"state-{kind}", *sandbox)
            try:
                mgw.start()
                await deploy(session, mgw, work, (kind,))
                memory[kind] = await hold(session, mgw, mgw.function_url(kind), args.hold)
            finally:
                mgw.stop()
    out: dict[str, Any] = {"streams": args.streams, "rounds": rounds, "hold_streams": args.hold}
    for kind in KINDS:
        out[kind] = {"p50_ms": pct(lags[kind], 50), "p90_ms": pct(lags[kind], 90), "p99_ms": pct(lags[kind], 99),
                     "p999_ms": pct(lags[kind], 99.9), "events": len(lags[kind]),
                     "gateway_cpu_us_per_event": cpu[kind] / events[kind] * 1e6, "memory": memory[kind]}
    out["added_p50_ms"] = out["sfjournal"]["p50_ms"] - out["sfplain"]["p50_ms"]
    out["added_p99_ms"] = out["sfjournal"]["p99_ms"] - out["sfplain"]["p99_ms"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s, 300 streams held")
    parser.add_argument("--streams", type=int, default=100, help="streams per delay round (default 100)")
    parser.add_argument("--hold", type=int, default=0, help="streams held for the memory figure (default 1,000; --quick 300)")
    platform_options(parser, RESULTS)
    args = parser.parse_args()
    args.hold = args.hold or (300 if args.quick else 1000)
    nofile = raise_fd_limit()
    other = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    run_info = Run()
    tmp = Path(tempfile.mkdtemp(prefix="streamfaas-bench-journal-"))
    try:
        print(f"bench_journal: streamfaas from {describe_code(run_info.code)}", file=sys.stderr)
        results = uvloop.run(run(tmp, args))
    finally:
        if not args.keep_state:
            shutil.rmtree(tmp, ignore_errors=True)
    t = Targets()
    t.add("journal: added delay p50 per event", results["added_p50_ms"], "ms", "(report)", True)
    t.add("journal: added delay p99 per event", results["added_p99_ms"], "ms", "<= 0.1 ms", results["added_p99_ms"] <= 0.1)
    for kind in KINDS:
        r = results[kind]
        t.add(f"{kind}: delay p50 / p90 / p99 / p99.9", r["p50_ms"], "ms",
              f"{r['p90_ms']:.2f} / {r['p99_ms']:.2f} / {r['p999_ms']:.2f} ms", True)
        t.add(f"{kind}: gateway CPU per event", r["gateway_cpu_us_per_event"], "µs", "(report)", True)
        t.add(f"{kind}: gateway RSS per open stream", r["memory"]["open_kib_per_stream"], "KiB", "(report)", True)
        t.add(f"{kind}: … after 20 events each", r["memory"]["after_20_events_kib_per_stream"], "KiB", "(report)", True)
    t.print()
    run_info.write(args.out, {"quick": args.quick, "rlimit_nofile": nofile, "other_cpu_pct_at_start": other,
                              "targets": t.rows, "results": results},
                   aiohttp=aiohttp.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
