#!/usr/bin/env python3
"""Connection bursts: many streams opened at once, through the whole stack and directly.

    python bench/bench_burst.py [--quick] [--levels N ...] [--rounds N] [--wait-quiet S]
                                [--no-sandbox] [--keep-state] [--out PATH]

Starts a gateway on 127.0.0.1 and deploys a python3-flask (waitress) function whose handler
streams ``EVENTS`` events ``INTERVAL`` apart, each carrying its send time (CLOCK_MONOTONIC, so
the client can subtract it). For each level N, it opens N streams at the same instant, directly
on the function server's Unix socket and through client → gateway → watchdog → function, in
interleaved rounds (the order alternates). Per level and path: TTFB p50/p99 (request → first
event), per-event delay p50/p99 (receive − send) of each stream's first 3 events and of the
rest, TCP listen overflows (TcpExt ListenOverflows, a system-wide counter: its delta per round),
errors, and the gateway's, watchdog's and function server's CPU and peak RSS. Also the idle
footprint (RSS and private memory) and every listener's effective backlog (``ss``).

Prints a table and writes bench/results/burst.json; see bench/README.md. Every load loop is
bounded and every process is stopped in ``finally`` (process groups).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import subprocess
import sys
import tempfile
import time
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
    Endpoint,
    FunctionServers,
    Gateway,
    Run,
    Targets,
    build_image,
    client_session,
    cmdline,
    cpu_seconds,
    describe_code,
    fd_count,
    function_pids,
    listening_unix_sockets,
    pct,
    private_kb,
    raise_fd_limit,
    rss_kb,
    step,
    table,
    tcp_ext,
    watchdog_pids,
)
from cpuwatch import CpuWatch, wait_quiet  # noqa: E402

FN = "sfburst"
HANDLER = '''import time

from flask import Response, request


def handle(req):
    count = int(request.args.get("count", "10"))
    interval = float(request.args.get("interval", "0.1"))

    def events():
        start = time.monotonic()
        for seq in range(1, count + 1):
            delay = start + (seq - 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield f"data: {time.monotonic_ns()} {seq}\\n\\n"

    return Response(events(), mimetype="text/event-stream")
'''
FIRST = 3  # "first events": while the burst's connections are still being opened


@dataclass(frozen=True)
class Plan:
    levels: tuple[int, ...]
    rounds: int  # per path and level
    events: int = 10
    interval: float = 0.1
    settle: float = 0.5


def procs(gw: Gateway) -> dict[str, list[int]]:
    fn = [p for p in function_pids(gw.pid, FN) if cmdline(p).startswith(b"python\0index.py")]
    return {"gateway": [gw.pid], "watchdog": watchdog_pids(gw.pid, FN), "function": fn}


async def burst_round(endpoint: Endpoint, n: int, plan: Plan, pids: dict[str, list[int]]) -> dict[str, Any]:
    """``n`` streams opened at once; every one reads all its events (bounded by a timeout)."""
    session, base = endpoint
    url = f"{base}/?count={plan.events}&interval={plan.interval}"
    ttfb: list[int] = []
    first: list[int] = []
    rest: list[int] = []
    errors: dict[str, int] = {}
    go = asyncio.Event()

    async def one() -> None:
        await go.wait()
        began = time.monotonic_ns()
        seen = 0
        try:
            async with session.get(url) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")
                carry = b""
                while chunk := await resp.content.readany():
                    now = time.monotonic_ns()
                    if not seen:
                        ttfb.append(now - began)
                    *events, carry = (carry + chunk).split(b"\n\n")
                    for event in events:
                        sent, seq = event[6:].split(b" ")
                        (first if int(seq) <= FIRST else rest).append(now - int(sent))
                        seen += 1
            if seen != plan.events:
                raise RuntimeError(f"{seen} of {plan.events} events")
        except Exception as exc:  # counted, not fatal: the round reports them
            errors[exc.__class__.__name__] = errors.get(exc.__class__.__name__, 0) + 1

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await asyncio.sleep(0.05)  # every task waits on `go`: the n requests start together
    overflows = tcp_ext("ListenOverflows")["ListenOverflows"]
    cpu = {k: sum(map(cpu_seconds, v)) for k, v in pids.items()}
    peak = dict.fromkeys(pids, 0)
    started = time.monotonic()
    gc.disable()  # the client's own collections would show up as delay
    go.set()
    try:
        async with asyncio.timeout(plan.events * plan.interval + 60):
            while not all(t.done() for t in tasks):
                for k, v in pids.items():
                    peak[k] = max(peak[k], sum(map(rss_kb, v)))
                await asyncio.wait(tasks, timeout=0.1)
    finally:
        gc.enable()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.monotonic() - started
    ms = 1e6
    return {
        "streams": n,
        "wall_s": round(wall, 3),
        "ttfb_ms": [v / ms for v in ttfb],
        "first_ms": [v / ms for v in first],
        "rest_ms": [v / ms for v in rest],
        "errors": errors,
        "listen_overflows": tcp_ext("ListenOverflows")["ListenOverflows"] - overflows,
        "cpu_s": {k: round(sum(map(cpu_seconds, v)) - cpu[k], 3) for k, v in pids.items()},
        "rss_peak_kb": peak,
        "watchdog_fds_after": sum(fd_count(p) for p in pids["watchdog"]),
    }


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Every round's samples of one path and level together, and their totals."""
    out: dict[str, Any] = {"rounds": len(rounds)}
    for key in ("ttfb_ms", "first_ms", "rest_ms", "all_ms"):
        values = [v for r in rounds for v in (r[key] if key != "all_ms" else r["first_ms"] + r["rest_ms"])]
        out[key] = {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99)}
    out["listen_overflows"] = sum(r["listen_overflows"] for r in rounds)
    out["errors"] = sum(sum(r["errors"].values()) for r in rounds)
    out["cpu_s_per_round"] = {k: round(sum(r["cpu_s"][k] for r in rounds) / len(rounds), 3) for k in rounds[0]["cpu_s"]}
    out["rss_peak_kb"] = {k: max(r["rss_peak_kb"][k] for r in rounds) for k in rounds[0]["rss_peak_kb"]}
    return out


def backlogs(gw: Gateway, sockets: list[str]) -> dict[str, int]:
    """Each listener's effective backlog: ``ss`` shows it as a listening socket's Send-Q."""
    port = gw.url.rsplit(":", 1)[1]
    out = {}
    for name, args in [("gateway", ["-ltn", f"sport = :{port}"])] + [(s, ["-lx", f"src {s}"]) for s in sockets]:
        lines = subprocess.run(["ss", "-H", *args], capture_output=True, text=True).stdout.split("\n")
        cols = lines[0].split()
        out[name] = int(cols[3 if args[0] == "-lx" else 2]) if cols else -1
    return out


def footprint(pids: dict[str, list[int]]) -> dict[str, Any]:
    return {
        k: {"rss_kb": sum(map(rss_kb, v)), "private_kb": sum(map(private_kb, v)), "processes": len(v)}
        for k, v in pids.items()
    }


async def run_bench(gw: Gateway, work: Path, plan: Plan) -> dict[str, Any]:
    folder = work / FN
    folder.mkdir()
    (folder / "handler.py").write_text(HANDLER)
    build_image(gw, FN, folder)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    async with client_session(connector) as session:
        servers = FunctionServers(session, gw, FN)
        try:
            api = Api(session, gw)
            # A waitress thread per stream: every stream of a level is served at once.
            env = {"threads": str(max(plan.levels) + 16), "drain_timeout": "2s"}
            await api.deploy({"service": FN, "image": f"{FN}:latest", "envVars": env})
            await api.wait_ready(FN)
            paths = {
                "direct": (await servers.live(probe="/_/health"))[0],
                "through": (session, gw.function_url(FN)),
            }
            pids = procs(gw)
            await asyncio.sleep(1.0)
            out: dict[str, Any] = {"idle": footprint(pids)}
            out["backlogs"] = backlogs(gw, [s for p in pids["watchdog"] + pids["function"] for s in listening_unix_sockets(p)])
            for path in ("direct", "through"):  # warm-up: imports, first connections
                await burst_round(paths[path], min(plan.levels), plan, pids)
            watch = CpuWatch()
            for n in plan.levels:
                step(f"{n} streams at once, {plan.rounds} round(s) each way")
                rounds: dict[str, list[dict[str, Any]]] = {"direct": [], "through": []}
                watch.mark(f"level_{n}")
                for r in range(plan.rounds):
                    for path in ("direct", "through") if r % 2 == 0 else ("through", "direct"):
                        gc.collect()
                        await asyncio.sleep(plan.settle)
                        rounds[path].append(await burst_round(paths[path], n, plan, pids))
                watch.mark("between")
                out[f"level_{n}"] = {
                    "pooled": {p: pooled(rs) for p, rs in rounds.items()},
                    "rounds": {
                        p: [{k: v for k, v in r.items() if not k.endswith("_ms")} | {
                            f"{k}_p50_p99": [pct(r[k], 50), pct(r[k], 99)] for k in ("ttfb_ms", "first_ms", "rest_ms")
                        } for r in rs] for p, rs in rounds.items()
                    },
                    "other_cpu_pct": watch.other_pct(f"level_{n}"),
                }
            out["after"] = footprint(pids)
            return out
        finally:
            await servers.close()


def ratio(r: dict[str, Any], key: str, q: str) -> float:
    return float(r["through"][key][q] / r["direct"][key][q])


def report(results: dict[str, Any], plan: Plan) -> Targets:
    rows = [("streams", "path", "TTFB p50/p99 ms", "first 3 p50/p99", "rest p50/p99", "overfl.", "err",
             "CPU s gw/wd/fn", "peak RSS MiB gw/wd")]
    t = Targets()
    for n in plan.levels:
        lvl = results[f"level_{n}"]["pooled"]
        for path in ("direct", "through"):
            p = lvl[path]
            cpu, rss = p["cpu_s_per_round"], p["rss_peak_kb"]
            rows.append((
                f"{n:,}", path, *(f"{p[k]['p50']:.1f} / {p[k]['p99']:.1f}" for k in ("ttfb_ms", "first_ms", "rest_ms")),
                str(p["listen_overflows"]), str(p["errors"]),
                f"{cpu['gateway']:.2f}/{cpu['watchdog']:.2f}/{cpu['function']:.2f}",
                f"{rss['gateway'] / 1024:.0f}/{rss['watchdog'] / 1024:.0f}",
            ))
        rows.append((f"{n:,}", "ratio", *(f"{ratio(lvl, k, 'p50'):.2f}× / {ratio(lvl, k, 'p99'):.2f}×"
                                          for k in ("ttfb_ms", "first_ms", "rest_ms")), "", "", "", ""))
        for q in ("p50", "p99"):
            v = ratio(lvl, "ttfb_ms", q)
            t.add(f"TTFB {q} through/direct @ {n:,}", v, "×", "<= 2.2×", v <= 2.2)
        overflows = lvl["through"]["listen_overflows"] + lvl["direct"]["listen_overflows"]
        t.add(f"listen overflows @ {n:,}", overflows, "", "= 0", overflows == 0)
    if 100 in plan.levels:
        v = ratio(results["level_100"]["pooled"], "all_ms", "p99")
        t.add("per-event p99 through/direct @ 100", v, "×", "<= 2.5×", v <= 2.5)
    idle = results["idle"]["watchdog"]
    t.add("watchdog idle RSS", idle["rss_kb"] / 1024 / max(idle["processes"], 1), "MiB", "<= 30 MiB",
          idle["rss_kb"] / 1024 / max(idle["processes"], 1) <= 30)
    print()
    table(rows)
    return t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 and 300 streams, 2 rounds each way")
    parser.add_argument("--levels", type=int, nargs="+", help="streams opened at once (default 100 1000)")
    parser.add_argument("--rounds", type=int, help="rounds per path and level (default 3)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="first wait up to SECONDS until other processes use <10%% of the CPUs")
    parser.add_argument("--keep-state", action="store_true", help="keep the state directory (logs)")
    parser.add_argument("--no-sandbox", action="store_true", help="start the gateway with --no-sandbox")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "burst.json")
    args = parser.parse_args()
    plan = Plan(
        levels=tuple(args.levels or ((100, 300) if args.quick else (100, 1000))),
        rounds=args.rounds or (2 if args.quick else 3),
    )
    nofile = raise_fd_limit()  # the client holds a socket per stream; the gateway inherits it
    other_at_start = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    run = Run()
    tmp = Path(tempfile.mkdtemp(prefix="streamfaas-burst-"))
    gw = Gateway(tmp / "state", *(["--no-sandbox"] if args.no_sandbox else []))
    try:
        gw.start()
        print(f"bench_burst: gateway {gw.url}, streamfaas from {describe_code(run.code)}", file=sys.stderr)
        results = uvloop.run(run_bench(gw, tmp, plan))
    finally:
        gw.stop()
        if args.keep_state:
            print(f"state kept in {gw.state_dir}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    targets = report(results, plan)
    targets.print()
    idle = results["idle"]
    print("\nidle: " + ", ".join(
        f"{k} RSS {v['rss_kb'] / 1024:.1f} MiB (private {v['private_kb'] / 1024:.1f})" for k, v in idle.items()))
    print(f"listen backlogs: {results['backlogs']}")
    others = {n: results[f"level_{n}"]["other_cpu_pct"] for n in plan.levels}
    if max(others.values()) > 10:
        print(f"WARNING: other processes used {others} % of the CPUs: compare ratios, not values", file=sys.stderr)
    body = {"plan": asdict(plan), "rlimit_nofile": nofile, "other_cpu_pct_at_start": other_at_start,
            "orphans": len(gw.orphans), "targets": targets.rows, "results": results}
    run.write(args.out, body, aiohttp=aiohttp.__version__, uvloop=version("uvloop"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
