"""Autoscaling on a step of streams (issue #13): from 0 to N streams at once, held for a while
(each client opens its next stream as soon as the last ends), against a function that scales
itself (min 1) and against a perfectly sized static one (min = max = ceil(N / threads)), in
the same run and the same gateway.

Figures, for each: the time to absorb the step (until no request waits for a slot), TTFB
p50/p99 of the streams opened during the step, and the replica-seconds used while it held.
Targets: with autoscaling, TTFB p99 ≤ 2 s and under 1.5× the static deployment's
replica-seconds.

    python bench/bench_autoscale.py            # 300 streams, threads 16, held 60 s
    python bench/bench_autoscale.py --quick    # a smoke run: 32 streams, threads 8, held 12 s
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchlib import (
    Api,
    Gateway,
    Run,
    Targets,
    build_image,
    client_session,
    pct,
    platform_options,
    step,
)

OUT = Path(__file__).with_name("results") / "autoscale.json"
HANDLER = """
import os, time
from flask import Response

def handle(req):
    steps, pause = int(os.environ["STEPS"]), float(os.environ["STEP"])
    def gen():
        yield "data: first\\n\\n"
        for i in range(steps):
            time.sleep(pause)
            yield f"data: {i}\\n\\n"
        yield "event: end\\ndata: done\\n\\n"
    return Response(gen(), mimetype="text/event-stream")
"""


async def client(session: aiohttp.ClientSession, url: str, until: float, ttfbs: list[float], errors: list[str]) -> None:
    """One user: a stream, then the next as soon as it ends, until ``until``."""
    while time.monotonic() < until:
        began = time.monotonic()
        try:
            async with session.post(url, data=b"x") as resp:
                first = True
                async for _ in resp.content.iter_any():
                    if first:
                        ttfbs.append(time.monotonic() - began)
                        first = False
                if resp.status != 200:
                    errors.append(f"HTTP {resp.status}")
        except aiohttp.ClientError as exc:
            errors.append(type(exc).__name__)


async def watch(session: aiohttp.ClientSession, api: Api, name: str, stop: asyncio.Event,
                samples: list[tuple[float, int, int, int]]) -> None:
    """``(time, replicas serving or draining, requests waiting, replicas wanted)`` every 100 ms."""
    url = f"{api.url}/system/function/{name}/scaling"
    while not stop.is_set():
        async with session.get(url, headers=api.headers) as r:
            view = await r.json()
        samples.append((time.monotonic(), view["availableReplicas"] + view["draining"], view["waiting"], view["replicas"]))
        await asyncio.sleep(0.1)


async def one_step(session: aiohttp.ClientSession, api: Api, gw: Gateway, name: str, args: argparse.Namespace) -> dict[str, Any]:
    ttfbs: list[float] = []
    errors: list[str] = []
    samples: list[tuple[float, int, int, int]] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(session, api, name, stop, samples))
    began = time.monotonic()
    until = began + args.hold
    async with asyncio.TaskGroup() as tg:
        for _ in range(args.streams):
            tg.create_task(client(session, gw.function_url(name), until, ttfbs, errors))
    ended = time.monotonic()
    stop.set()
    await watcher
    during = [s for s in samples if began <= s[0] <= ended]
    waited = [t for t, _, w, _ in during if w > 0]
    absorbed = next((t - began for t, _, w, _ in during if w == 0 and waited and t > waited[0]), 0.0 if not waited else math.nan)
    replica_s = sum(a[1] * (b[0] - a[0]) for a, b in zip(during, during[1:], strict=False))
    step_ttfbs = ttfbs[: args.streams]  # the first stream of each user: those that met the step
    # (seconds into the step, replicas serving or draining, requests waiting, replicas wanted), at each change.
    timeline = [(round(s[0] - began, 2), *s[1:]) for i, s in enumerate(during) if i == 0 or during[i - 1][1:] != s[1:]]
    return {
        "absorb_s": round(absorbed, 2), "ttfb_p50_s": round(pct(step_ttfbs, 50), 3), "ttfb_p99_s": round(pct(step_ttfbs, 99), 3),
        "replica_seconds": round(replica_s, 1), "peak_replicas": max((s[1] for s in during), default=0),
        "streams": len(ttfbs), "errors": len(errors), "first_errors": errors[:5], "timeline": timeline,
    }


async def bench(args: argparse.Namespace, gw: Gateway, folder: Path) -> dict[str, Any]:
    perfect = math.ceil(args.streams / args.threads)
    env = {"threads": str(args.threads), "STEPS": str(args.steps), "STEP": str(args.step)}
    results: dict[str, Any] = {}
    async with client_session() as session:
        api = Api(session, gw)
        for mode, labels in (("autoscaling", {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": str(args.max)}),
                             ("static", {"com.openfaas.scale.min": str(perfect), "com.openfaas.scale.max": str(perfect)})):
            name = f"step-{mode}"
            build_image(gw, name, folder)
            labels["com.openfaas.scale.target"] = str(args.threads)
            await api.deploy({"service": name, "image": f"{name}:latest", "envVars": env, "labels": labels})
            await api.wait_ready(name, int(labels["com.openfaas.scale.min"]))
            step(f"{mode}: {args.streams} streams at once, held {args.hold:g}s")
            results[mode] = await one_step(session, api, gw, name, args)
            async with session.delete(f"{gw.url}/system/functions", json={"functionName": name}, headers=api.headers):
                pass
    results["perfect_static_replicas"] = perfect
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--threads", type=int, default=16, help="threads per replica (= its target)")
    parser.add_argument("--max", type=int, default=20, help="com.openfaas.scale.max of the autoscaled function")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds the step is held")
    parser.add_argument("--steps", type=int, default=50, help="events per stream, --step apart")
    parser.add_argument("--step", type=float, default=0.2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 32 streams, 8 threads, held 12 s")
    platform_options(parser, OUT)
    args = parser.parse_args()
    if args.quick:
        args.streams, args.threads, args.hold, args.steps = 32, 8, 12.0, 15
        if args.out == OUT:
            args.out = OUT.with_name("autoscale-quick.json")
    run = Run()
    state = Path(tempfile.mkdtemp(prefix="bench-autoscale-"))
    folder = state / "fn"
    folder.mkdir()
    (folder / "handler.py").write_text(HANDLER)
    (folder / "requirements.txt").write_text("")
    gw = Gateway(state / "state", *(["--no-sandbox"] if args.no_sandbox else []))
    try:
        gw.start()
        results = asyncio.run(bench(args, gw, folder))
    finally:
        gw.stop()
        if not args.keep_state:
            shutil.rmtree(state, ignore_errors=True)
    auto, static = results["autoscaling"], results["static"]
    ratio = auto["replica_seconds"] / static["replica_seconds"] if static["replica_seconds"] else math.nan
    targets = Targets()
    targets.add("TTFB p99 during the step, autoscaling", auto["ttfb_p99_s"], "s", "≤ 2 s", auto["ttfb_p99_s"] <= 2)
    targets.add("replica-seconds vs perfect static", ratio, "×", "< 1.5×", ratio < 1.5)
    for mode in ("autoscaling", "static"):
        r = results[mode]
        print(f"{mode}: absorbed in {r['absorb_s']}s, TTFB p50 {r['ttfb_p50_s']}s p99 {r['ttfb_p99_s']}s, "
              f"{r['replica_seconds']} replica-s, peak {r['peak_replicas']} replicas, {r['errors']} errors")
    targets.print()
    params = {k: getattr(args, k) for k in ("streams", "threads", "max", "hold", "steps", "step", "quick")}
    run.write(args.out, {"params": params, "results": results, "targets": targets.rows})


if __name__ == "__main__":
    main()
