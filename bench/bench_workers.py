#!/usr/bin/env python3
"""Issue 16, part 2, measured before it is built: what a second event loop on the gateway hop
gives a burst of streams.

    python bench/bench_workers.py [--levels N ...] [--rounds N] [--wait-quiet S]
                                  [--no-sandbox] [--keep-state] [--out PATH]

bench_burst.py's function and bursts, over four paths in interleaved rounds: ``direct`` (the
function server's Unix socket), ``gateway`` (the real gateway → watchdog → function), ``one``
(one bench/proxy_loop.py process → the same watchdog) and ``two`` (two proxy_loop.py processes
sharing one port with SO_REUSEPORT, as ``--workers 2`` would). ``one`` against ``two`` isolates
the second loop; ``gateway`` against ``one`` shows what the gateway does beyond the bare hop.
Prints a table and writes bench/results/workers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_burst import FN, SAMPLES, Plan, Target, burst_round, deploy_burst_function, pooled  # noqa: E402
from benchlib import (  # noqa: E402
    Gateway,
    Run,
    bench_gateway,
    describe_code,
    platform_options,
    raise_fd_limit,
    step,
    stop_group,
    table,
)
from cpuwatch import CpuWatch, wait_quiet  # noqa: E402

PATHS = ("direct", "gateway", "one", "two")


def start_loops(count: int, watchdog: str) -> tuple[list[subprocess.Popen[bytes]], int]:
    """``count`` proxy_loop.py processes on one port; the first picks it."""
    procs: list[subprocess.Popen[bytes]] = []
    port = 0
    try:
        for _ in range(count):
            proc = subprocess.Popen(
                [sys.executable, str(BENCH / "proxy_loop.py"), "--watchdog", watchdog, "--port", str(port)],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            if not line.startswith("port "):
                raise RuntimeError(f"proxy_loop.py did not start: {line!r}")
            port = int(line.split()[1])
    except BaseException:
        for proc in procs:
            stop_group(proc)
        raise
    return procs, port


async def run_bench(gw: Gateway, work: Path, plan: Plan, loops: dict[str, int]) -> dict[str, Any]:
    fn_socket, wd, fn = await deploy_burst_function(gw, work, plan)
    wd_socket = fn_socket.removesuffix(".fn.sock") + ".sock"
    base = {"client": [os.getpid()], "watchdog": wd, "function": fn}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        hops: dict[str, list[int]] = {"direct": [], "gateway": [gw.pid]}
        paths: dict[str, Target] = {
            "direct": (lambda: aiohttp.UnixConnector(fn_socket, limit=0), "http://localhost"),
            "gateway": (lambda: aiohttp.TCPConnector(limit=0), gw.function_url(FN)),
        }
        for path, count in loops.items():
            started, port = start_loops(count, wd_socket)
            procs += started
            hops[path] = [p.pid for p in started]
            paths[path] = (lambda: aiohttp.TCPConnector(limit=0), f"http://127.0.0.1:{port}/function/{FN}")
        pids = {path: {**base, "gateway": hops[path]} for path in PATHS}
        await asyncio.sleep(1.0)
        for path in PATHS:  # warm-up: imports, first connections
            await burst_round(paths[path], min(plan.levels), plan, pids[path])
        out: dict[str, Any] = {}
        watch = CpuWatch()
        for n in plan.levels:
            step(f"{n} streams at once, {plan.rounds} round(s) each way")
            rounds: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
            watch.mark(f"level_{n}")
            for r in range(plan.rounds):
                order = PATHS[r % len(PATHS):] + PATHS[: r % len(PATHS)]  # rotated each round
                for path in order:
                    gc.collect()
                    await asyncio.sleep(plan.settle)
                    rounds[path].append(await burst_round(paths[path], n, plan, pids[path]))
            watch.mark("between")
            out[f"level_{n}"] = {
                "pooled": {p: pooled(rs) for p, rs in rounds.items()},
                "other_cpu_pct": watch.other_pct(f"level_{n}"),
                "steal_pct": watch.report()[f"level_{n}"]["steal_pct"],
            }
        return out
    finally:
        for proc in procs:
            stop_group(proc)


def report(results: dict[str, Any], plan: Plan) -> None:
    rows = [("streams", "path", "TTFB p50/p99 ms", "first 3 events", "the rest", "errors", "CPU s gw-hop/wd/fn")]
    for n in plan.levels:
        level = results[f"level_{n}"]["pooled"]
        for path in PATHS:
            p = level[path]
            cpu = p["cpu_s_per_round"]
            rows.append((
                f"{n:,}", path, *(f"{p[k]['p50']:.1f} / {p[k]['p99']:.1f}" for k in SAMPLES), str(p["errors"]),
                "/".join(f"{cpu[k]:.2f}" for k in ("gateway", "watchdog", "function")),
            ))  # fmt: skip
        d = level["direct"]
        for path in PATHS[1:]:
            p = level[path]
            rows.append((f"{n:,}", f"{path}/direct", *(
                f"{p[k]['p50'] / d[k]['p50']:.2f}× / {p[k]['p99'] / d[k]['p99']:.2f}×" for k in SAMPLES
            ), "", ""))  # fmt: skip
    print()
    table(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", help="streams at once (100 1000)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per path and level (4)")
    platform_options(parser, BENCH / "results" / "workers.json")
    args = parser.parse_args()
    plan = Plan(levels=tuple(args.levels or (100, 1000)), rounds=args.rounds)
    nofile = raise_fd_limit()
    other_at_start = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    run = Run()
    with bench_gateway("streamfaas-workers-", args) as (gw, tmp):
        print(f"bench_workers: gateway {gw.url}, code {describe_code(run.code)}", file=sys.stderr)
        results = uvloop.run(run_bench(gw, tmp, plan, {"one": 1, "two": 2}))
    report(results, plan)
    for n in plan.levels:
        level = results[f"level_{n}"]
        if level["other_cpu_pct"] > 10 or level["steal_pct"] > 5:
            print(f"WARNING @ {n}: others {level['other_cpu_pct']} %, steal {level['steal_pct']} %", file=sys.stderr)
    body = dict(plan=asdict(plan), rlimit_nofile=nofile, other_cpu_pct_at_start=other_at_start, results=results)
    run.write(args.out, body, aiohttp=aiohttp.__version__, uvloop=version("uvloop"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
