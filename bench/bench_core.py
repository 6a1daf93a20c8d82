#!/usr/bin/env python3
"""The streaming core benchmark: what the gateway and the watchdog add to a stream.

    python bench/bench_core.py [--quick] [--wait-quiet S] [--no-sandbox] [--out PATH]

Starts a real gateway (local provider) on 127.0.0.1 with a fresh state directory, deploys three
functions and measures, in one run:

1. the per-event delay that gateway + watchdog add at 100 concurrent streams (through vs direct);
2. how many concurrent 1-event/s streams the gateway holds (a stream counts once it delivered
   every event due in the window), their delivery lag and the gateway's RSS;
3. back-to-back small events/s, through vs direct, 1 and 8 streams;
4. cold start: scale-from-zero to the first byte (python3-flask);
5. redeploy (python3-flask with a requirements.txt, venv reused): an env-only change, and a
   changed handler through ``streamfaas up`` (build + deploy), each until the new one answers.

Prints a table and writes bench/results/core.json. See bench/README.md for what each figure means.
Every process it starts is stopped in ``finally`` (process groups); every load loop is bounded.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "core.json"
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
    descendants,
    describe_code,
    platform_options,
    raise_fd_limit,
    step,
)
from core_sections import (  # noqa: E402
    COLD_FN,
    REDEPLOY_FN,
    STREAM_FN,
    Plan,
    core_server_folder,
    deployment,
    measure_burst,
    measure_cold,
    measure_delay,
    measure_hold,
    measure_redeploy,
)
from cpuwatch import CpuWatch, wait_quiet  # noqa: E402


def build_images(gw: Gateway, work: Path) -> Path:
    """The three functions' images; returns the redeploy function's folder (its handler is
    rewritten by the redeploy section)."""
    build_image(gw, STREAM_FN, core_server_folder(work, STREAM_FN))

    cold = work / COLD_FN
    cold.mkdir()
    (cold / "handler.py").write_text("def handle(req):\n    return 'hello\\n'\n")
    build_image(gw, COLD_FN, cold)

    redeploy = work / REDEPLOY_FN
    redeploy.mkdir()
    (redeploy / "handler.py").write_text(
        "import os\n\n\ndef handle(req):\n    return os.environ.get('BENCH_VERSION', '')\n"
    )
    # Already satisfied by the platform's packages: pip runs once (venv build), offline.
    (redeploy / "requirements.txt").write_text("waitress>=3.0\n")
    build_image(gw, REDEPLOY_FN, redeploy)
    return redeploy


# ---- the run --------------------------------------------------------------------------------


async def run_sections(gw: Gateway, work: Path, plan: Plan) -> dict[str, Any]:
    redeploy_folder = build_images(gw, work)
    async with client_session() as session:
        servers = FunctionServers(session, gw, STREAM_FN)
        try:
            api = Api(session, gw)
            for name in (STREAM_FN, COLD_FN, REDEPLOY_FN):  # sfredeploy's venv is built here
                await api.deploy(deployment(name, "v0" if name == REDEPLOY_FN else ""))
            for name in (STREAM_FN, COLD_FN, REDEPLOY_FN):
                await api.wait_ready(name)
            direct = (await servers.live())[0]
            gc.collect()
            gc.freeze()
            sections: dict[str, tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = {
                "added_delay": (
                    "1/5 added delay",
                    lambda: measure_delay(session, gw, direct, plan),
                ),
                "throughput": (
                    "3/5 back-to-back events/s",
                    lambda: measure_burst(session, gw, direct, plan),
                ),
                "streams_held": (
                    f"2/5 streams held: {', '.join(map(str, plan.hold_levels))}",
                    lambda: measure_hold(session, api, gw, servers, plan),
                ),
                "cold_start": ("4/5 cold start", lambda: measure_cold(session, api, gw, plan)),
                "redeploy": (
                    "5/5 redeploy: env change, changed handler",
                    lambda: measure_redeploy(session, api, gw, redeploy_folder, plan),
                ),
            }
            results: dict[str, Any] = {}
            watch = CpuWatch()
            for key, (title, measure) in sections.items():
                step(title)
                watch.mark(key)
                results[key] = await measure()
                watch.mark("between")
                if watch.other_pct(key) > 10:
                    step(f"warning: other processes used {watch.other_pct(key)}% of the CPUs")
            results["other_cpu_pct"] = {key: watch.other_pct(key) for key in sections}
            # The local provider runs function servers under bubblewrap when it can.
            results["functions_sandboxed"] = any(
                cmdline(p).split(b"\0", 1)[0].endswith(b"bwrap") for p in descendants(gw.pid)
            )
            results["function_server_address"] = servers.addresses()[0].split(":", 1)[0]
            return results
        finally:
            await servers.close()


def verdicts(r: dict[str, Any]) -> Targets:
    t = Targets()
    d = r["added_delay"]
    t.add(
        "added delay p50 (100 streams)",
        d["added_p50_ms"],
        "ms",
        "<= 0.3 ms",
        d["added_p50_ms"] <= 0.3,
    )
    t.add(
        "added delay p99 (100 streams)", d["added_p99_ms"], "ms", "<= 2 ms", d["added_p99_ms"] <= 2
    )
    for lvl in r["streams_held"]["levels"]:
        req, held = lvl["requested"], lvl["held"]
        t.add(f"streams held of {req:,}", held, "streams", f"= {req:,}", held >= req)
        t.add(
            f"lag p99 @ {held:,} streams",
            lvl["lag_p99_ms"],
            "ms",
            "<= 100 ms",
            lvl["lag_p99_ms"] <= 100,
        )
        kb = lvl["gateway_kb_per_stream"]
        t.add(f"gateway RSS/stream @ {held:,}", kb, "KiB", "<= 20 KiB", kb <= 20)
    for n in r["throughput"]["streams"]:
        ratio = r["throughput"][f"streams_{n}"]["ratio"]
        t.add(f"events/s through/direct, {n} stream(s)", ratio * 100, "%", ">= 50 %", ratio >= 0.5)
    c = r["cold_start"]
    t.add(
        "cold start p50 (scale from 0, 1st byte)",
        c["p50_ms"],
        "ms",
        "<= 300 ms",
        c["p50_ms"] <= 300,
    )
    for kind, what in (("env", "env change"), ("handler", "changed handler, build")):
        p50 = r["redeploy"][kind]["p50_s"]
        t.add(f"redeploy p50 ({what})", p50, "s", "<= 2 s", p50 <= 2)
    return t


def print_details(r: dict[str, Any]) -> None:
    d = r["added_delay"]
    print(
        f"\nper-event lag, 100 streams: direct p50 {d['direct_ms']['p50']:.3f} / p99"
        f" {d['direct_ms']['p99']:.3f} ms, through p50 {d['through_ms']['p50']:.3f} / p99"
        f" {d['through_ms']['p99']:.3f} ms"
    )
    for n in r["throughput"]["streams"]:
        t = r["throughput"][f"streams_{n}"]
        print(f"events/s, {n} stream(s): direct {t['direct_eps']:,}  through {t['through_eps']:,}")
    for lvl in r["streams_held"]["levels"]:
        print(
            f"hold {lvl['held']}/{lvl['requested']} (open {lvl['open_at_end']}, with a gap"
            f" {lvl['with_gap']}, behind {lvl['behind']}): opened in {lvl['open_s']} s, lag p50"
            f" {lvl['lag_p50_ms']:.2f} ms, gateway {lvl['gateway_rss_kb'] / 1024:.1f} MiB (idle"
            f" {lvl['gateway_rss_idle_kb'] / 1024:.1f}), {lvl['gateway_fds']} fds, watchdogs"
            f" {lvl['watchdogs_kb_per_stream']:.1f} KiB/stream, errors {lvl['errors'] or 0}"
        )
    print(f"cold start samples (ms): {r['cold_start']['samples_ms']}")
    for kind in ("env", "handler"):
        rd = r["redeploy"][kind]
        print(f"redeploy, {rd['change']}: {rd['samples_s']} s (venv reused: {rd['venv_reused']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller run (under a minute): 1,000 streams only, fewer rounds",
    )
    platform_options(parser, RESULTS)
    args = parser.parse_args()
    plan = Plan.make(args.quick)
    nofile = raise_fd_limit()  # the gateway and its replicas inherit it
    other_at_start = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    run = Run()
    with bench_gateway("streamfaas-bench-", args) as (gw, tmp):
        print(
            f"bench_core: gateway {gw.url} (state {gw.state_dir}, RLIMIT_NOFILE {nofile}),"
            f" streamfaas from {describe_code(run.code)}",
            file=sys.stderr,
        )
        results = uvloop.run(run_sections(gw, tmp, plan))
    targets = verdicts(results)
    targets.print()
    print_details(results)
    if gw.orphans:
        print(f"WARNING: {len(gw.orphans)} process(es) outlived the gateway", file=sys.stderr)
    body = {
        "quick": plan.quick,
        "rlimit_nofile": nofile,
        "other_cpu_pct_at_start": other_at_start,
        "orphans": len(gw.orphans),
        "targets": targets.rows,
        "results": results,
    }
    run.write(args.out, body, aiohttp=aiohttp.__version__, uvloop=version("uvloop"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
