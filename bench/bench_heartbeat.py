#!/usr/bin/env python3
"""What heartbeats cost the gateway: its CPU with N idle event streams, heartbeats on and off.

    python bench/bench_heartbeat.py [--streams N] [--window S] [--rounds R] [--intervals LIST]
                                    [--wait-quiet S] [--no-sandbox] [--keep-state] [--out PATH]

A gateway on 127.0.0.1 and bench/core_server.py (``sfstream``) deployed three times from one
image, differing only in ``heartbeat_interval``: 0 (off), a short interval that magnifies the
cost (1s) and the default (unset, 15 s). Each round opens N idle event streams to one of them,
waits until heartbeats are in their steady rhythm, then reads the gateway's CPU seconds from
/proc over a fixed window; arms are interleaved round by round against drift. Prints a table and
writes bench/results/heartbeat.json; bench/README.md says what the figures mean. Every process
it starts is stopped in ``finally``; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import statistics
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from prometheus_client.parser import text_string_to_metric_families

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "heartbeat.json"
sys.path.insert(0, str(BENCH))

from benchlib import (  # noqa: E402
    Api,
    Gateway,
    Run,
    Targets,
    bench_gateway,
    build_image,
    client_session,
    cpu_seconds,
    describe_code,
    platform_options,
    poll,
    raise_fd_limit,
    step,
    table,
)
from core_sections import core_server_folder, extra_env  # noqa: E402
from cpuwatch import CpuWatch, wait_quiet  # noqa: E402
from streamfaas.config import DEFAULT_HEARTBEAT_INTERVAL  # noqa: E402

IMAGE = "sfbeat"
OPEN_CONCURRENCY = 200  # streams being opened at once (stays under the listen backlog)
# core_server's /ticks caps a stream at 600 s and sends its first event at a random phase within
# the interval: at 600 s, about (settle + window) / 600 of the streams get one event in a round,
# the same share in every arm.
IDLE_URL = "/ticks?interval=600&count=0"
TARGET_STREAMS = 5000
TARGET_PCT = 2.0  # issue 14: heartbeats at 5,000 idle streams cost <= 2 % of a core
PING = b": ping\n"


@dataclass(frozen=True)
class Arm:
    key: str  # "off", "1s", "default"
    interval: float  # seconds; 0: no heartbeats
    env: dict[str, str]  # the deployment's heartbeat_interval setting (none for the default)

    @property
    def function(self) -> str:
        return f"sfbeat-{self.key}"

    def settle(self, shortest: float) -> float:
        # The first ping comes 1 to 1.5 intervals into a silence, then one every interval.
        return 1.5 * (self.interval or shortest) + 1.0

    def window(self, base: float) -> float:
        # Whole intervals, so every stream's pings fall into the window equally often.
        return math.ceil(base / self.interval) * self.interval if self.interval else base


def arms(intervals: str) -> list[Arm]:
    out = [Arm("off", 0.0, {"heartbeat_interval": "0"})]
    for item in filter(None, (s.strip() for s in intervals.split(","))):
        if item == "default":
            out.append(Arm("default", DEFAULT_HEARTBEAT_INTERVAL, {}))
        else:
            seconds = float(item.removesuffix("s"))
            out.append(Arm(f"{seconds:g}s", seconds, {"heartbeat_interval": f"{seconds:g}s"}))
    return out


async def hold_round(
    session: aiohttp.ClientSession, gw: Gateway, arm: Arm, n: int, settle: float, window: float, watch: CpuWatch
) -> dict[str, Any]:
    """Open ``n`` idle streams to ``arm``'s function, settle, measure the gateway's CPU over
    ``window``, then close them all."""
    url = gw.function_url(arm.function) + IDLE_URL
    sem = asyncio.Semaphore(OPEN_CONCURRENCY)
    responses: list[aiohttp.ClientResponse] = []
    errors: list[str] = []  # streams that did not open: counted and reported, not fatal

    async def one() -> None:
        async with sem:
            resp = await session.get(url)
            if resp.status != 200:
                errors.append(f"{resp.status} {(await resp.text())[:200].strip()}")
                resp.close()
                return
            await resp.content.readany()  # ": ok": the whole chain is open
            responses.append(resp)

    t0 = time.monotonic()
    try:
        async with asyncio.timeout(120), asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(one())
        open_s = time.monotonic() - t0
        await asyncio.sleep(settle)
        watch.mark(arm.key)
        cpu0, wall0 = cpu_seconds(gw.pid), time.monotonic()
        await asyncio.sleep(window)
        cpu1, wall1 = cpu_seconds(gw.pid), time.monotonic()
        watch.mark("between")
        # What the client got so far, without waiting: the pings prove heartbeats were on (or off).
        pings = [resp.content.read_nowait().count(PING) for resp in responses]
    finally:
        for resp in responses:
            resp.close()
    return {
        "arm": arm.key,
        "open_s": round(open_s, 2),
        "window_s": round(wall1 - wall0, 3),
        "gateway_cpu_s": round(cpu1 - cpu0, 3),
        "gateway_cpu_pct": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 3),
        "pings_per_stream_p50": statistics.median(pings) if pings else 0,
        "still_open": len(responses),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
    }


async def measure(gw: Gateway, work: Path, args: argparse.Namespace, plan: list[Arm]) -> dict[str, Any]:
    build_image(gw, IMAGE, core_server_folder(work, IMAGE))
    replicas = args.replicas or max(1, math.ceil(args.streams / 2500))  # a watchdog holds 2 fds a stream too
    shortest = min((a.interval for a in plan if a.interval), default=1.0)
    rounds: list[dict[str, Any]] = []
    watch = CpuWatch()
    async with client_session() as session:
        api = Api(session, gw)
        # min = max: the replica count is pinned, so no autoscaler starts or stops a
        # replica (which costs the gateway CPU) while a round is measured.
        pinned = {"com.openfaas.scale.min": str(replicas), "com.openfaas.scale.max": str(replicas)}
        # core_server is asyncio: a replica holds every stream it is given, not one per thread
        # (the gateway sizes a replica's slots by ``threads``).
        slots = {"threads": str(max(64, math.ceil(args.streams / replicas) + 16))}
        for arm in plan:
            env = {**extra_env(), **slots, **arm.env}
            body = {"service": arm.function, "image": f"{IMAGE}:latest", "envVars": env,
                    "envProcess": "python function/core_server.py", "labels": pinned}
            await api.deploy(body)
        for arm in plan:
            await api.wait_ready(arm.function, replicas)
        for r in range(1, args.rounds + 1):
            # Rotated each round, so no arm always follows the same one.
            for arm in plan[r % len(plan):] + plan[: r % len(plan)]:
                settle, window = arm.settle(shortest), arm.window(args.window)
                step(f"round {r}/{args.rounds}: {arm.key}, {args.streams:,} streams, {settle:g}+{window:g} s")
                rounds.append(await hold_round(session, gw, arm, args.streams, settle, window, watch))
                await poll(functools.partial(drained, api, arm.function), 60, f"{arm.function}'s streams to close", 0.1)
    return {"replicas": replicas, "rounds": rounds, "other_cpu_pct": {a.key: watch.other_pct(a.key) for a in plan}}


async def drained(api: Api, function: str) -> bool:
    """No stream of ``function`` open in the gateway (its ``gateway_streams_open``). The function
    servers are not asked: core_server notices a closed stream only at its next write, which an
    idle stream makes up to 600 s later (the watchdog has closed its side at once)."""
    async with api.s.get(f"{api.url}/metrics", headers=api.headers) as r:
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_streams_open" and sample.labels.get("function_name") == function:
                return sample.value == 0
    return True


def summarise(results: dict[str, Any], plan: list[Arm], streams: int) -> tuple[dict[str, Any], Targets]:
    per_arm: dict[str, Any] = {}
    for arm in plan:
        mine = [r for r in results["rounds"] if r["arm"] == arm.key]
        pcts = [r["gateway_cpu_pct"] for r in mine]
        per_arm[arm.key] = {
            "heartbeat_interval_s": arm.interval,
            "gateway_cpu_pct": pcts,
            "gateway_cpu_pct_p50": round(statistics.median(pcts), 3),
            "pings_per_stream_p50": statistics.median(r["pings_per_stream_p50"] for r in mine),
        }
    targets = Targets()
    off = per_arm["off"]["gateway_cpu_pct_p50"]
    for arm in plan[1:]:
        added = per_arm[arm.key]["gateway_cpu_pct_p50"] - off
        beats_per_s = streams / arm.interval
        per_arm[arm.key]["added_pct"] = round(added, 3)
        per_arm[arm.key]["us_per_heartbeat"] = round(added / 100 / beats_per_s * 1e6, 2)
        if arm.key != "default":
            continue  # a short interval magnifies the cost; the target is the default's
        if streams == TARGET_STREAMS:
            targets.add(f"added gateway CPU, heartbeats every {arm.interval:g} s (default), {streams:,} streams",
                        added, "% of a core", f"<= {TARGET_PCT:g} %", added <= TARGET_PCT)
        else:
            scaled = added * TARGET_STREAMS / streams  # one timer and one ping per stream: linear in N
            per_arm[arm.key]["added_pct_scaled_to_5000"] = round(scaled, 3)
            targets.add(f"added gateway CPU, default ({arm.interval:g} s), {streams:,} streams scaled to {TARGET_STREAMS:,}",
                        scaled, "% of a core", f"<= {TARGET_PCT:g} %", scaled <= TARGET_PCT)
    return per_arm, targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=TARGET_STREAMS, help="idle streams held per round (default %(default)s)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of CPU measured per round, rounded up to whole heartbeat intervals (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every arm, interleaved (default %(default)s)")
    parser.add_argument("--intervals", default="1s,default", help="heartbeat intervals besides off: seconds or 'default' (default %(default)s)")
    parser.add_argument("--replicas", type=int, default=0, help="sfstream replicas per function (default: one per 2,500 streams)")
    platform_options(parser, RESULTS)
    args = parser.parse_args()
    if args.streams < 1 or args.window <= 0 or args.rounds < 1:
        parser.error("--streams, --window and --rounds must be positive")
    try:
        plan = arms(args.intervals)
    except ValueError:
        parser.error(f"--intervals: expected seconds or 'default', comma-separated, got {args.intervals!r}")
    if any(a.interval and a.interval < 0.1 for a in plan):
        parser.error("--intervals: the gateway takes 100ms at least")
    nofile = raise_fd_limit()  # the gateway and its replicas inherit it
    other_at_start = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    run = Run()
    with bench_gateway("streamfaas-bench-", args) as (gw, tmp):
        print(f"bench_heartbeat: gateway {gw.url}, streamfaas from {describe_code(run.code)}", file=sys.stderr)
        results = uvloop.run(measure(gw, tmp, args, plan))
    per_arm, targets = summarise(results, plan, args.streams)
    rows = [("heartbeats", "gateway CPU p50", "rounds (% of a core)", "added", "µs/beat", "pings/stream")]
    for key, a in per_arm.items():
        rows.append((f"default ({a['heartbeat_interval_s']:g} s)" if key == "default" else key,
                     f"{a['gateway_cpu_pct_p50']:.2f} %", " ".join(f"{p:.2f}" for p in a["gateway_cpu_pct"]),
                     f"{a['added_pct']:+.2f} %" if "added_pct" in a else "",
                     f"{a['us_per_heartbeat']:.1f}" if "us_per_heartbeat" in a else "",
                     f"{a['pings_per_stream_p50']:g}"))
    print(f"\n{args.streams:,} idle streams, {args.rounds} round(s) of each")
    table(rows)
    if targets.rows:
        targets.print()
    if gw.orphans:
        print(f"WARNING: {len(gw.orphans)} process(es) outlived the gateway", file=sys.stderr)
    body = {
        "streams": args.streams, "rounds": args.rounds, "window_s": args.window, "rlimit_nofile": nofile,
        "other_cpu_pct_at_start": other_at_start, "orphans": len(gw.orphans),
        "targets": targets.rows, "arms": per_arm, "results": results,
    }
    run.write(args.out, body, aiohttp=aiohttp.__version__, uvloop=version("uvloop"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
