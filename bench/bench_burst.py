#!/usr/bin/env python3
"""Connection bursts: many streams opened at the same instant, through the stack and directly.

    python bench/bench_burst.py [--quick] [--levels N ...] [--rounds N] [--wait-quiet S]
                                [--no-sandbox] [--keep-state] [--out PATH]

A gateway on 127.0.0.1 and a python3-flask (waitress) function streaming 10 timestamped events
100 ms apart; N streams opened at once, on the function server's Unix socket (direct) and
through gateway → watchdog → function, in interleaved rounds. Prints a table and writes
bench/results/burst.json; bench/README.md says what each figure means. Every load loop is
bounded; every process is stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from benchlib import (  # noqa: E402
    Api,
    FunctionServers,
    Gateway,
    Run,
    Targets,
    bench_gateway,
    build_image,
    client_session,
    cmdline,
    cpu_seconds,
    describe_code,
    fd_count,
    function_pids,
    listen_backlogs,
    listening_unix_sockets,
    memory,
    pct,
    platform_options,
    raise_fd_limit,
    rss_kb,
    step,
    table,
    tcp_ext,
    watchdog_pids,
)
from cpuwatch import CpuWatch, wait_quiet  # noqa: E402

FN = "sfburst"
# The first event at once (TTFB), the others INTERVAL apart at a random phase, so that the
# streams of a burst do not all tick at the same instant.
HANDLER = """import random
import time
from flask import Response, request

def handle(req):
    count = int(request.args.get("count", "10"))
    interval = float(request.args.get("interval", "0.1"))

    def events():
        phase = time.monotonic() - interval * random.random()
        for seq in range(1, count + 1):
            delay = phase + (seq - 1) * interval - time.monotonic()
            if seq > 1 and delay > 0:
                time.sleep(delay)
            yield f"data: {time.monotonic_ns()} {seq}\\n\\n"
    return Response(events(), mimetype="text/event-stream")
"""
FIRST = 3  # a stream's first events: sent while the burst's connections are still opening
SAMPLES = ("ttfb_ms", "first_ms", "rest_ms")
PATHS = ("direct", "through")
WATCHDOG_PATH = "watchdog"  # --watchdog-path: client → the replica's watchdog (Unix socket) → function
Target = tuple[Callable[[], aiohttp.BaseConnector], str]  # new connections, and the base URL


@dataclass(frozen=True)
class Plan:
    levels: tuple[int, ...]
    rounds: int  # per path and level
    events: int = 10
    interval: float = 0.1
    settle: float = 0.5
    paths: tuple[str, ...] = PATHS


async def burst_round(
    target: Target, n: int, plan: Plan, pids: dict[str, list[int]]
) -> dict[str, Any]:
    """``n`` streams started together, each on a new connection (a new session every round);
    each reads all its events (bounded by a timeout)."""
    connector, base = target
    session = client_session(connector())
    url = f"{base}/?count={plan.events}&interval={plan.interval}"
    samples: dict[str, list[float]] = {k: [] for k in SAMPLES}
    ttfb, first, rest = (samples[k] for k in SAMPLES)
    errors: dict[str, int] = {}
    go = asyncio.Event()

    async def one() -> None:
        await go.wait()
        began, seen, carry = time.monotonic_ns(), 0, b""
        try:
            async with session.get(url) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")
                while chunk := await resp.content.readany():
                    now = time.monotonic_ns()
                    if not seen:
                        ttfb.append((now - began) / 1e6)
                    *events, carry = (carry + chunk).split(b"\n\n")
                    for event in events:
                        # "data: NS SEQ", after the gateway's "retry:" hint on the first event
                        sent, seq = event[event.index(b"data: ") + 6 :].split(b" ")
                        (first if int(seq) <= FIRST else rest).append((now - int(sent)) / 1e6)
                        seen += 1
            if seen != plan.events:
                raise RuntimeError(f"{seen} of {plan.events} events")
        except Exception as exc:  # counted, not fatal: the round reports them
            errors[exc.__class__.__name__] = errors.get(exc.__class__.__name__, 0) + 1

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await asyncio.sleep(0.05)  # every task now waits on `go`
    overflows = tcp_ext("ListenOverflows")["ListenOverflows"]
    cpu = {k: sum(map(cpu_seconds, v)) for k, v in pids.items()}
    peak, busiest, last = dict.fromkeys(pids, 0), dict.fromkeys(pids, 0.0), dict(cpu)
    started = tick = time.monotonic()
    gc.disable()  # the client's own collections would show up as delay
    go.set()
    try:
        async with asyncio.timeout(plan.events * plan.interval + 60):
            while not all(t.done() for t in tasks):
                await asyncio.wait(tasks, timeout=0.1)
                now = time.monotonic()
                for k, v in pids.items():
                    peak[k] = max(peak[k], sum(map(rss_kb, v)))
                    used = sum(map(cpu_seconds, v))
                    busiest[k] = max(busiest[k], 100 * (used - last[k]) / (now - tick))  # 1 core
                    last[k] = used
                tick = now
    finally:
        gc.enable()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
    return {
        "streams": n,
        "wall_s": round(time.monotonic() - started, 3),
        **samples,
        "errors": errors,
        "listen_overflows": tcp_ext("ListenOverflows")["ListenOverflows"] - overflows,
        "cpu_s": {k: round(sum(map(cpu_seconds, v)) - cpu[k], 3) for k, v in pids.items()},
        "rss_peak_kb": peak,
        "cpu_peak_pct": {k: round(v) for k, v in busiest.items()},  # busiest ~0.1 s, one core
        # Kept-alive connections stay open after the round: client side + function side.
        "watchdog_fds_after": sum(fd_count(p) for p in pids["watchdog"]),
    }


def percentiles(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99)}


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Every round's samples of one path and level together, and their totals."""
    out: dict[str, Any] = {k: percentiles([v for r in rounds for v in r[k]]) for k in SAMPLES}
    out["all_ms"] = percentiles([v for r in rounds for v in r["first_ms"] + r["rest_ms"]])
    out["listen_overflows"] = sum(r["listen_overflows"] for r in rounds)
    out["errors"] = sum(sum(r["errors"].values()) for r in rounds)
    roles = rounds[0]["cpu_s"]
    out["cpu_s_per_round"] = {k: sum(r["cpu_s"][k] for r in rounds) / len(rounds) for k in roles}
    out["rss_peak_kb"] = {k: max(r["rss_peak_kb"][k] for r in rounds) for k in roles}
    out["cpu_peak_pct"] = {k: max(r["cpu_peak_pct"][k] for r in rounds) for k in roles}
    return out


def per_round(r: dict[str, Any]) -> dict[str, Any]:
    """One round for the JSON: its percentiles instead of its samples."""
    return {k: (percentiles(v) if k in SAMPLES else v) for k, v in r.items()}


async def deploy_burst_function(gw: Gateway, work: Path, plan: Plan) -> tuple[str, list[int], list[int]]:
    """``FN`` built and deployed for ``plan``; its one replica's function-server socket, and
    the pids of its watchdog and of its function server."""
    (work / FN).mkdir()
    (work / FN / "handler.py").write_text(HANDLER)
    build_image(gw, FN, work / FN)
    async with client_session() as session:
        # A waitress thread per stream: every stream of a level is served at once.
        env = {"threads": str(max(plan.levels) + 16), "drain_timeout": "2s"}
        # One replica, pinned: the autoscaler would add replicas mid-burst (cold starts on the
        # same cores), and the direct path measures this one replica's server.
        pin = {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "1"}
        await Api(session, gw).deploy(
            {"service": FN, "image": f"{FN}:latest", "envVars": env, "labels": pin}
        )
        await Api(session, gw).wait_ready(FN)
    # The one replica's function server (no session is opened on it here: each round opens its own).
    socket = FunctionServers(session, gw, FN).addresses()[-1].removeprefix("unix:")
    wd = watchdog_pids(gw.pid, FN)
    argv0 = {p: cmdline(p).split(b"\0")[0] for p in function_pids(gw.pid, FN)}
    fn = [p for p, a in argv0.items() if p not in wd and b"python" in a]  # not bwrap's
    return socket, wd, fn


async def run_bench(gw: Gateway, work: Path, plan: Plan) -> dict[str, Any]:
    socket, wd, fn = await deploy_burst_function(gw, work, plan)
    paths: dict[str, Target] = {
        "direct": (lambda: aiohttp.UnixConnector(socket, limit=0), "http://localhost"),
        "through": (lambda: aiohttp.TCPConnector(limit=0), gw.function_url(FN)),
    }
    if WATCHDOG_PATH in plan.paths:  # the watchdog's own socket: the one listener it has besides the function's
        [wsock] = [path for path in listening_unix_sockets(wd[0]) if path != socket]
        paths[WATCHDOG_PATH] = (lambda: aiohttp.UnixConnector(wsock, limit=0), "http://localhost")
    pids = {"client": [os.getpid()], "gateway": [gw.pid], "watchdog": wd, "function": fn}
    await asyncio.sleep(1.0)
    out: dict[str, Any] = {"processes": {k: len(v) for k, v in pids.items()}}
    out["idle"] = {k: memory(v) for k, v in pids.items()}
    unix = [path for p in wd + fn for path in listening_unix_sockets(p)]
    out["backlogs"] = listen_backlogs(int(gw.url.rsplit(":", 1)[1]), unix)
    order = plan.paths
    for path in order:  # warm-up: imports, first connections
        await burst_round(paths[path], min(plan.levels), plan, pids)
    watch = CpuWatch()
    for n in plan.levels:
        step(f"{n} streams at once, {plan.rounds} round(s) each way")
        rounds: dict[str, list[dict[str, Any]]] = {p: [] for p in order}
        watch.mark(f"level_{n}")
        for r in range(plan.rounds):
            # Interleaved, the order rotated each round: (direct, through), (through, direct), …
            for path in order[r % len(order):] + order[:r % len(order)]:
                gc.collect()
                await asyncio.sleep(plan.settle)
                rounds[path].append(await burst_round(paths[path], n, plan, pids))
        watch.mark("between")
        out[f"level_{n}"] = {
            "pooled": {p: pooled(rs) for p, rs in rounds.items()},
            "rounds": {p: [per_round(r) for r in rs] for p, rs in rounds.items()},
            "other_cpu_pct": watch.other_pct(f"level_{n}"),
            # CPU time the hypervisor gave to others (a VM's "steal"): it slows both paths, unevenly.
            "steal_pct": watch.report()[f"level_{n}"]["steal_pct"],
        }
    out["after"] = {k: memory(v) for k, v in pids.items()}
    return out


def ratio(level: dict[str, Any], key: str, q: str) -> float:
    return float(level["through"][key][q] / level["direct"][key][q])


def report(results: dict[str, Any], plan: Plan) -> Targets:
    head = ("streams", "path", "TTFB p50/p99 ms", "first 3 events", "the rest", "overflows")
    rows = [(*head, "errors", "CPU s (peak %) gw/wd/fn", "peak RSS MiB gw/wd")]
    t = Targets()
    for n in plan.levels:
        level = results[f"level_{n}"]["pooled"]
        for path in plan.paths:
            p = level[path]
            cpu, rss = p["cpu_s_per_round"], p["rss_peak_kb"]
            rows.append((
                f"{n:,}", path, *(f"{p[k]['p50']:.1f} / {p[k]['p99']:.1f}" for k in SAMPLES),
                str(p["listen_overflows"]), str(p["errors"]),
                "/".join(f"{cpu[k]:.2f} ({p['cpu_peak_pct'][k]})" for k in ("gateway", "watchdog", "function")),
                f"{rss['gateway'] / 1024:.0f}/{rss['watchdog'] / 1024:.0f}",
            ))  # fmt: skip
        rows.append((f"{n:,}", "ratio", *(
            f"{ratio(level, k, 'p50'):.2f}× / {ratio(level, k, 'p99'):.2f}×" for k in SAMPLES
        ), "", "", "", ""))  # fmt: skip
        for q in ("p50", "p99"):
            v = ratio(level, "ttfb_ms", q)
            t.add(f"TTFB {q} through/direct @ {n:,}", v, "×", "<= 2.2×", v <= 2.2)
        overflows = sum(level[p]["listen_overflows"] for p in plan.paths)
        t.add(f"listen overflows @ {n:,}", overflows, "", "= 0", overflows == 0)
    if 100 in plan.levels:
        v = ratio(results["level_100"]["pooled"], "all_ms", "p99")
        t.add("per-event p99 through/direct @ 100", v, "×", "<= 2.5×", v <= 2.5)
    mib = results["idle"]["watchdog"]["rss_kb"] / 1024 / max(results["processes"]["watchdog"], 1)
    t.add("watchdog idle RSS", mib, "MiB", "<= 30 MiB", mib <= 30)
    print()
    table(rows)
    return t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 and 300 streams, 2 rounds")
    parser.add_argument("--levels", type=int, nargs="+", help="streams at once (100 1000)")
    parser.add_argument("--rounds", type=int, help="rounds per path and level (3)")
    parser.add_argument("--watchdog-path", action="store_true",
                        help="a third path, client → watchdog → function, to tell the two hops' costs apart")
    platform_options(parser, BENCH / "results" / "burst.json")
    args = parser.parse_args()
    levels = args.levels or ((100, 300) if args.quick else (100, 1000))
    paths = (*PATHS, WATCHDOG_PATH) if args.watchdog_path else PATHS
    plan = Plan(levels=tuple(levels), rounds=args.rounds or (2 if args.quick else 3), paths=paths)
    nofile = raise_fd_limit()  # the client holds a socket per stream; the gateway inherits it
    other_at_start = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    run = Run()
    with bench_gateway("streamfaas-burst-", args) as (gw, tmp):
        print(f"bench_burst: gateway {gw.url}, code {describe_code(run.code)}", file=sys.stderr)
        results = uvloop.run(run_bench(gw, tmp, plan))
    targets = report(results, plan)
    targets.print()
    idle = (
        f"{k} {v['rss_kb'] >> 10} ({v['private_kb'] >> 10})" for k, v in results["idle"].items()
    )
    print(f"\nidle RSS (private) MiB: {', '.join(idle)}; listen backlogs: {results['backlogs']}")
    others = {n: results[f"level_{n}"]["other_cpu_pct"] for n in plan.levels}
    if max(others.values()) > 10:
        print(f"WARNING: other processes used {others} % of the CPUs", file=sys.stderr)
    steal = {n: results[f"level_{n}"]["steal_pct"] for n in plan.levels}
    if max(steal.values()) > 5:
        print(f"WARNING: the hypervisor took {steal} % of the CPUs (steal): figures are noisy", file=sys.stderr)
    body = dict(plan=asdict(plan), rlimit_nofile=nofile, other_cpu_pct_at_start=other_at_start)
    body |= dict(orphans=len(gw.orphans), targets=targets.rows, results=results)
    run.write(args.out, body, aiohttp=aiohttp.__version__, uvloop=version("uvloop"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
