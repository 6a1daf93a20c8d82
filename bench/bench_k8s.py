#!/usr/bin/env python3
"""The kubernetes provider beside the local one (issue 11), measured in the same run.

    python bench/bench_k8s.py [--quick] [--wait-quiet S] [--keep-state] [--no-sandbox] [--out PATH]

Needs the test cluster (``scripts/k8s-cluster.sh up``: /var/tmp/streamfaas-k8s/env). Publishes one
function image to its registry (``streamfaas publish`` FROM ``scripts/oci-base-image.sh``'s base),
starts a local-provider gateway and a kubernetes-provider gateway on a fresh namespace labelled
openfaas=1, deploys the same three functions on each, and measures, the two interleaved:

1. added per-event delay: 100 streams of bench/core_server.py ticks through the gateway, minus the
   same read from the replica's watchdog directly (the pod's ``http://POD_IP:8080``; locally the
   watchdog's Unix socket);
2. cold start: scale to 0, wait until no replica is left, then one request to its first byte; on
   kubernetes also each step of the new pod (k8s_steps.py): seen by watches (as the gateway sees
   them), its first process's start (/proc) and its watchdog's log lines (listening, ready);
3. redeploy: ``POST /system/functions`` with a changed env var, until the new version answers.

Prints a table, writes bench/results/k8s.json. Gateways are stopped by process group and the
namespace deleted (and waited for) in ``finally``; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "k8s.json"
sys.path.insert(0, str(BENCH))

from benchlib import (  # noqa: E402
    REPO,
    Api,
    Endpoint,
    FunctionServers,
    Gateway,
    Run,
    Targets,
    build_image,
    cli,
    client_session,
    first_byte,
    function_pids,
    pct,
    platform_options,
    poll,
    raise_fd_limit,
    step,
    table,
)
from core_sections import COLD_FN, REDEPLOY_FN, STREAM_FN, Plan, delay_round, extra_env  # noqa: E402
from cpuwatch import CpuWatch, wait_quiet  # noqa: E402
from k8s_steps import POD_STEPS, PodTimeline, offsets  # noqa: E402

sys.path.insert(0, str(REPO / "tests" / "k8s"))
from k8s_fixture import ENV_FILE, Kubectl, delete_namespace, load_env, make_namespace  # noqa: E402

from streamfaas.provider.kubernetes._api import KubeClient  # noqa: E402

BASE_IMAGE = "localhost/streamfaas-pybase:bookworm"
IMAGE_FN = "sfbench"  # one image for all three: core_server.py, and a python3-flask handler
HANDLER = "import os\n\n\ndef handle(req):\n    return os.environ.get('BENCH_VERSION', 'hello')\n"
SIDES = ("kubernetes", "local")
# The cold start's steps in their usual order since the gateway probes a woken pod itself:
# the first byte comes before the kubelet reports the pod ready.
COLD_STEPS = (*POD_STEPS[:6], "first_byte", *POD_STEPS[6:])


class Side:
    """One provider: its gateway and /system API, how its functions are deployed, and (on
    kubernetes) the timeline of its pods."""

    def __init__(
        self,
        name: str,
        gw: Gateway,
        api: Api,
        image: str,
        env: dict[str, str],
        tl: PodTimeline | None = None,
    ) -> None:
        self.name, self.gw, self.api, self.image, self.env, self.tl = name, gw, api, image, env, tl

    def body(self, fn: str, version: str = "") -> dict[str, Any]:
        body: dict[str, Any] = {"service": fn, "image": self.image, "envVars": dict(self.env)}
        if fn == STREAM_FN:
            body["envProcess"] = "python function/core_server.py"
        if version:
            body["envVars"]["BENCH_VERSION"] = version
        return body


async def until(done: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition on what the watches saw (no I/O of its own)."""

    async def check() -> bool:
        return done()

    await poll(check, timeout, what)


async def cold_round(session: aiohttp.ClientSession, side: Side, _i: int) -> dict[str, Any]:
    tl = side.tl
    await side.api.scale(COLD_FN, 0)

    async def gone() -> bool:
        if await side.api.available(COLD_FN):
            return False
        return tl.gone(COLD_FN) if tl else not function_pids(side.gw.pid, COLD_FN)

    await poll(gone, 120, f"{side.name}: {COLD_FN} to have no replica", 0.05)
    old = set(tl.steps) if tl else set()
    t0 = time.monotonic()
    done = {"first_byte": await first_byte(session, side.gw.function_url(COLD_FN))}
    if tl is None:
        return offsets(done, t0, ("first_byte",))
    await until(lambda: bool(set(tl.pods(COLD_FN)) - old), 30, "the watch to see the new pod")
    pod = next(p for p in tl.pods(COLD_FN) if p not in old)
    await until(lambda: "in_endpoints" in tl.steps[pod], 30, "the watch to see the new pod")
    await tl.inside(pod)
    return offsets({**tl.steps[pod], **done}, t0, COLD_STEPS)


async def redeploy_round(session: aiohttp.ClientSession, side: Side, i: int) -> dict[str, Any]:
    url, version, tl = side.gw.function_url(REDEPLOY_FN), f"v{i + 1}", side.tl

    async def serves() -> bool:
        try:
            async with session.get(url) as r:
                return r.status == 200 and await r.text() == version
        except aiohttp.ClientError:  # an old pod going away
            return False

    old = set(tl.steps) if tl else set()
    t0 = time.monotonic()
    await side.api.deploy(side.body(REDEPLOY_FN, version))
    await poll(serves, 120, f"{side.name}: {REDEPLOY_FN} to answer {version}", 0.01)
    out: dict[str, Any] = {"new_version_s": round(time.monotonic() - t0, 3)}
    if tl is not None:  # the next round starts once the old pod is gone
        await until(
            lambda: all(
                "deleted" in tl.steps[p] for p in old & set(tl.pods(REDEPLOY_FN, live=False))
            ),
            120,
            "the old pod to go",
        )
        new = next(p for p in tl.pods(REDEPLOY_FN) if p not in old)
        await tl.inside(new)
        out["pod_ms"] = offsets(tl.steps[new], t0, POD_STEPS)
    return out


async def measure_delay(
    session: aiohttp.ClientSession, sides: list[Side], direct: dict[str, Endpoint], plan: Plan
) -> dict[str, Any]:
    ways = {(s.name, "direct"): direct[s.name] for s in sides}
    ways |= {(s.name, "through"): (session, s.gw.function_url(STREAM_FN)) for s in sides}
    for way in ways.values():  # warm every path up (connections, first-use allocations)
        await delay_round(*way, plan.warm_up(1.0))
    lags: dict[tuple[str, str], list[float]] = {k: [] for k in ways}
    per_round: dict[str, list[list[float]]] = {f"{s}_{w}": [] for s, w in ways}
    for i in range(plan.delay_rounds):
        for s in sides if i % 2 == 0 else sides[::-1]:  # neither side always goes first
            for w in ("direct", "through"):
                got = [v / 1e6 for v in await delay_round(*ways[s.name, w], plan)]
                lags[s.name, w] += got
                per_round[f"{s.name}_{w}"].append([round(pct(got, 50), 3), round(pct(got, 99), 3)])
    out: dict[str, Any] = {"streams": plan.delay_streams, "rounds_p50_p99_ms": per_round}
    for (name, w), v in lags.items():
        out[f"{name}_{w}_ms"] = {
            "events": len(v),
            "p50": pct(v, 50),
            "p99": pct(v, 99),
            "max": max(v),
        }
    for name in SIDES:
        for q in ("p50", "p99"):
            out[f"{name}_added_{q}_ms"] = out[f"{name}_through_ms"][q] - out[f"{name}_direct_ms"][q]
    return out


async def run_sections(
    gateways: tuple[Gateway, Gateway],
    image: str,
    namespace: str,
    kubeconfig: Path,
    plan: Plan,
    rounds: int,
) -> dict[str, Any]:
    client = await KubeClient.connect(kubeconfig)
    tl = PodTimeline(client, namespace)
    tasks = [asyncio.create_task(i.run()) for i in tl.informers]
    try:
        async with asyncio.timeout(60):
            for informer in tl.informers:
                await informer.synced.wait()
        async with client_session() as session:
            kube_gw, local_gw = gateways
            sides = [
                Side(
                    "kubernetes", kube_gw, Api(session, kube_gw), image, {"drain_timeout": "2s"}, tl
                ),
                Side("local", local_gw, Api(session, local_gw), f"{IMAGE_FN}:latest", extra_env()),
            ]
            for s in sides:
                for fn in (STREAM_FN, COLD_FN, REDEPLOY_FN):
                    await s.api.deploy(s.body(fn, "v0" if fn == REDEPLOY_FN else ""))
            for s in sides:
                for fn in (STREAM_FN, COLD_FN, REDEPLOY_FN):
                    await s.api.wait_ready(fn, timeout=300)  # the node's first pull of the image
            servers = FunctionServers(session, local_gw, STREAM_FN)
            try:
                direct = {
                    "kubernetes": (session, f"http://{tl.ip[tl.pods(STREAM_FN)[0]]}:8080"),
                    "local": servers.watchdogs()[-1],
                }
                watch, out = CpuWatch(), {}
                step("1/3 added per-event delay")
                watch.mark("delay")
                out["added_delay"] = await measure_delay(session, sides, direct, plan)
                for key, title, one in (
                    ("cold_start", "2/3 cold start", cold_round),
                    ("redeploy", "3/3 redeploy (env change)", redeploy_round),
                ):
                    step(title)
                    watch.mark(key)
                    samples: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
                    for i in range(rounds):
                        for s in sides if i % 2 == 0 else sides[::-1]:
                            samples[s.name].append(await one(session, s, i))
                    out[key] = samples
                watch.mark("end")
                out["other_cpu_pct"] = {
                    k: watch.other_pct(k) for k in ("delay", "cold_start", "redeploy")
                }
                return out
            finally:
                await servers.close()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()


def report(r: dict[str, Any]) -> tuple[dict[str, Any], Targets]:
    d, summary = r["added_delay"], {}
    for s in SIDES:
        summary[s] = {f"added_{q}_ms": d[f"{s}_added_{q}_ms"] for q in ("p50", "p99")}
        summary[s]["cold_p50_ms"] = pct([c["first_byte"] for c in r["cold_start"][s]], 50)
        summary[s]["redeploy_p50_s"] = pct([c["new_version_s"] for c in r["redeploy"][s]], 50)
    cold_k8s = r["cold_start"]["kubernetes"]
    summary["cold_steps_p50_ms"] = {
        k: pct([c[k] for c in cold_k8s if k in c], 50) for k in COLD_STEPS
    }
    k, lo = summary["kubernetes"], summary["local"]
    rows = [("figure", *SIDES, "kubernetes − local")]
    for label, key, fmt in (
        ("added delay per event p50", "added_p50_ms", "{:.3f} ms"),
        ("added delay per event p99", "added_p99_ms", "{:.3f} ms"),
        ("cold start p50 (0 → 1st byte)", "cold_p50_ms", "{:.0f} ms"),
        ("redeploy p50 (env change)", "redeploy_p50_s", "{:.2f} s"),
    ):
        diff = fmt.replace("{:", "{:+").format(k[key] - lo[key])
        rows.append((label, fmt.format(k[key]), fmt.format(lo[key]), diff))
    print()
    table(rows)
    print(
        f"\nper-event delay, {d['streams']} streams, p50 / p99 ms: "
        + "; ".join(
            f"{s} {w} {d[f'{s}_{w}_ms']['p50']:.3f} / {d[f'{s}_{w}_ms']['p99']:.3f}"
            for s in SIDES
            for w in ("direct", "through")
        )
    )
    print(
        "kubernetes cold start, median ms after the request: "
        + ", ".join(f"{name} {ms:.0f}" for name, ms in summary["cold_steps_p50_ms"].items())
    )
    for s in SIDES:
        print(
            f"{s}: cold start {[c['first_byte'] for c in r['cold_start'][s]]} ms,"
            f" redeploy {[c['new_version_s'] for c in r['redeploy'][s]]} s"
        )
    t = Targets()
    for q in ("p50", "p99"):
        diff = k[f"added_{q}_ms"] - lo[f"added_{q}_ms"]
        t.add(f"added delay {q}, kubernetes − local", diff, "ms", "<= 0.2 ms", diff <= 0.2)
    cold_s = k["cold_p50_ms"] / 1000
    t.add("kubernetes cold start p50", cold_s, "s", "<= 1.5 s", cold_s <= 1.5)
    t.print()
    return summary, t


def publish(folder: Path, gw: Gateway, registry: str) -> str:
    """``streamfaas publish`` of the function folder to the cluster's registry, offline."""
    image = f"{IMAGE_FN}:{uuid.uuid4().hex[:8]}"
    stack = folder.parent / "stack.yaml"
    stack.write_text(
        f"version: 1.0\nfunctions:\n  {IMAGE_FN}:\n    lang: python3-flask\n"
        f"    handler: ./{folder.name}\n    image: {image}\n"
    )
    args = ("publish", "-f", str(stack), "--registry", registry, "--base-image", BASE_IMAGE)
    done = subprocess.run(
        cli("--state-dir", str(gw.state_dir), *args),
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"streamfaas publish: exit {done.returncode}: {done.stderr[-1500:]}")
    return f"{registry}/{image}"


def remove_namespace(kubectl: Kubectl, namespace: str) -> bool:
    """Delete the run's namespace and wait (bounded) until it is gone, pods and all."""
    delete_namespace(kubectl, namespace)
    deadline = time.monotonic() + 180
    while kubectl.get("namespace", namespace) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of each instead of 5")
    platform_options(parser, RESULTS)
    args = parser.parse_args()
    if not ENV_FILE.is_file():
        print(f"bench_k8s: no cluster ({ENV_FILE} missing: k8s-cluster.sh up)", file=sys.stderr)
        return 2
    env = load_env()
    kubectl = Kubectl(env)
    script = REPO / "scripts" / "oci-base-image.sh"  # cached: quick when the image is there
    base = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    if base.returncode != 0:
        why = (base.stderr.strip().splitlines() or ["?"])[-1]
        print(f"bench_k8s: no base image: {why}", file=sys.stderr)
        return 1
    plan, rounds = Plan.make(args.quick), 2 if args.quick else 5
    raise_fd_limit()  # the gateways and their replicas inherit it
    other_at_start = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    run = Run()
    try:
        namespace = make_namespace(kubectl, "sf-bench")
    except AssertionError as exc:  # kubectl's one line: the cluster is down, or refuses us
        print(f"bench_k8s: cannot make a namespace: {exc}", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="streamfaas-bench-k8s-"))
    kube_args = ("--kubeconfig", str(env.kubeconfig), "--namespace", namespace)
    kube = Gateway(tmp / "kubernetes", "--provider", "kubernetes", *kube_args)
    local = Gateway(tmp / "local", *(["--no-sandbox"] if args.no_sandbox else []))
    image, namespace_removed = "", False
    try:
        folder = tmp / IMAGE_FN
        folder.mkdir()
        shutil.copy2(BENCH / "core_server.py", folder / "core_server.py")
        (folder / "handler.py").write_text(HANDLER)
        kube.start()
        local.start()
        print(
            f"bench_k8s: gateways {kube.url} (kubernetes, namespace {namespace}), {local.url} (local)",
            file=sys.stderr,
        )
        step("streamfaas publish (the function's image)")
        started = time.monotonic()
        image = publish(folder, kube, env.registry)
        publish_s = round(time.monotonic() - started, 1)
        build_image(local, IMAGE_FN, folder)
        results = uvloop.run(
            run_sections((kube, local), image, namespace, env.kubeconfig, plan, rounds)
        )
    finally:
        kube.stop()
        local.stop()
        namespace_removed = remove_namespace(kubectl, namespace)
        if image:  # buildah's copy (the registry and the node keep theirs)
            subprocess.run(["buildah", "rmi", image], capture_output=True, check=False)
        if args.keep_state:
            print(f"state kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    summary, targets = report(results)
    orphans = len(kube.orphans) + len(local.orphans)
    if orphans or not namespace_removed:
        print(
            f"WARNING: {orphans} process(es) outlived the gateways; namespace {namespace} removed:"
            f" {namespace_removed}",
            file=sys.stderr,
        )
    body = {
        "quick": plan.quick,
        "rounds": rounds,
        "image": image,
        "publish_s": publish_s,
        "other_cpu_pct_at_start": other_at_start,
        "orphans": orphans,
        "namespace_removed": namespace_removed,
        "targets": targets.rows,
        "summary": summary,
        "results": results,
    }
    run.write(args.out, body, aiohttp=aiohttp.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
