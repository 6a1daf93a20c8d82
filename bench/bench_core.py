#!/usr/bin/env python3
"""The streaming core benchmark: what the gateway and the watchdog add to a stream.

    python bench/bench_core.py [--quick]

Starts a real gateway (local provider) on 127.0.0.1 with a fresh state directory, deploys three
functions and measures, in one run:

1. the per-event delay that gateway + watchdog add at 100 concurrent streams (through vs direct);
2. how many concurrent 1-event/s streams the gateway holds, their delivery lag and its RSS;
3. back-to-back small events/s, through vs direct, 1 and 8 streams;
4. cold start: scale-from-zero to the first byte (python3-flask);
5. redeploy with a warm dependency cache (python3-flask with a requirements.txt).

Prints a table and writes bench/results/core.json. See bench/README.md for what each figure means.
Every process it starts is stopped in ``finally`` (process groups); every load loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results" / "core.json"
sys.path.insert(0, str(BENCH))

from benchlib import (  # noqa: E402
    CpuMeter,
    Gateway,
    cmdline,
    code_under_test,
    descendants,
    fd_count,
    fd_limit,
    machine,
    pct,
    poll,
    raise_fd_limit,
    rss_kb,
    step,
    wait_quiet,
    write_results,
)

STREAM_FN = "sfstream"  # bench/core_server.py (aiohttp) behind a watchdog
COLD_FN = "sfcold"  # python3-flask hello
REDEPLOY_FN = "sfredeploy"  # python3-flask with a requirements.txt
OPEN_CONCURRENCY = 200  # streams being opened at once in the hold test (stays under the backlog)
FD_MARGIN = 64  # gateway fds kept free when sizing the largest hold level


@dataclass(frozen=True)
class Plan:
    quick: bool
    delay_streams: int = 100
    delay_interval: float = 0.05  # 20 events/s per stream
    delay_seconds: float = 1.5
    delay_rounds: int = 4  # direct, through, direct, through ... (interleaved against drift)
    hold_levels: tuple[int, ...] = (1000, 5000, 10000)
    hold_replicas: int = 3
    hold_settle: float = 1.5
    hold_window: float = 5.0
    burst_seconds: float = 2.0
    burst_size: int = 64
    burst_streams: tuple[int, ...] = (1, 8)
    cold_reps: int = 5
    redeploy_reps: int = 3

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if not quick:
            return cls(quick=False)
        return cls(
            quick=True,
            delay_seconds=1.0,
            delay_rounds=2,
            hold_levels=(1000,),
            hold_replicas=1,
            hold_settle=1.0,
            hold_window=3.0,
            burst_seconds=1.0,
            cold_reps=3,
            redeploy_reps=1,
        )


# ---- processes ------------------------------------------------------------------------------


def function_pids(gateway_pid: int, name: str) -> list[int]:
    """Watchdog and function server processes of one function (found by their environment)."""
    needle = f"STREAMFAAS_FUNCTION={name}".encode()
    out = []
    for pid in descendants(gateway_pid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    out.append(pid)
        except OSError:
            continue
    return out


def build_images(state_dir: Path, work: Path) -> None:
    from streamfaas.provider.images import ImageStore

    images = ImageStore(state_dir / "images")
    stream = work / STREAM_FN
    stream.mkdir()
    shutil.copy2(BENCH / "core_server.py", stream / "core_server.py")
    (stream / "handler.py").write_text("def handle(req):\n    return ''\n")
    images.build(f"{STREAM_FN}:latest", "python3-flask", stream)

    cold = work / COLD_FN
    cold.mkdir()
    (cold / "handler.py").write_text("def handle(req):\n    return 'hello\\n'\n")
    images.build(f"{COLD_FN}:latest", "python3-flask", cold)

    redeploy = work / REDEPLOY_FN
    redeploy.mkdir()
    (redeploy / "handler.py").write_text(
        "import os\n\n\ndef handle(req):\n    return os.environ.get('BENCH_VERSION', '')\n"
    )
    # Already satisfied by the platform's packages: pip runs once (venv build), offline.
    (redeploy / "requirements.txt").write_text("waitress>=3.0\n")
    images.build(f"{REDEPLOY_FN}:latest", "python3-flask", redeploy)


def deployment(name: str, version: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {
        "service": name,
        "image": f"{name}:latest",
        "envVars": {"drain_timeout": "2s"},
    }
    if name == STREAM_FN:
        body["envProcess"] = "python function/core_server.py"
    if version:
        body["envVars"]["BENCH_VERSION"] = version
    if os.environ.get("PYTHONPATH"):
        # Measuring another checkout: before issue 9 a deployment's envVars reached the watchdog
        # (now they reach the function process only, and the watchdog runs with ``-I``).
        body["envVars"]["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return body


class Api:
    """The gateway's /system API (basic auth)."""

    def __init__(self, session: aiohttp.ClientSession, gw: Gateway) -> None:
        self.s = session
        self.url = gw.url
        self.auth = gw.auth

    async def deploy(self, body: dict[str, Any]) -> None:
        async with self.s.post(f"{self.url}/system/functions", json=body, auth=self.auth) as r:
            if r.status != 202:
                raise RuntimeError(f"deploy {body['service']}: {r.status} {await r.text()}")

    async def scale(self, name: str, replicas: int) -> None:
        body = {"serviceName": name, "replicas": replicas}
        async with self.s.post(
            f"{self.url}/system/scale-function/{name}", json=body, auth=self.auth
        ) as r:
            if r.status != 202:
                raise RuntimeError(f"scale {name}: {r.status} {await r.text()}")

    async def available(self, name: str) -> int:
        async with self.s.get(f"{self.url}/system/function/{name}", auth=self.auth) as r:
            return int((await r.json())["availableReplicas"])

    async def wait_ready(self, name: str, replicas: int = 1, timeout: float = 60) -> None:
        await poll(
            lambda: self._has(name, replicas), timeout, f"{name} to have {replicas} ready replicas"
        )

    async def _has(self, name: str, replicas: int) -> bool:
        return await self.available(name) >= replicas


Endpoint = tuple[aiohttp.ClientSession, str]  # a session and the base URL to use with it


class FunctionServers:
    """One function's servers, reached around the gateway and the watchdog.

    Where each listens comes from its watchdog's "function NAME ready at ADDRESS" log line:
    ``http://127.0.0.1:PORT``, or ``unix:PATH`` since replicas stopped listening on TCP
    (issue 9); a socket gets a session of its own. Accepting both lets one bench measure either.
    """

    def __init__(self, session: aiohttp.ClientSession, state_dir: Path, name: str) -> None:
        self.session = session
        self.log = state_dir / "logs" / f"{name}.log"
        self.ready = re.compile(
            rf"function {re.escape(name)} ready at (http://127\.0\.0\.1:\d+|unix:\S+)"
        )
        self.unix: dict[str, aiohttp.ClientSession] = {}

    def addresses(self) -> list[str]:
        return list(dict.fromkeys(self.ready.findall(self.log.read_text(errors="replace"))))

    def endpoint(self, address: str) -> Endpoint:
        if not address.startswith("unix:"):
            return self.session, address
        path = address.removeprefix("unix:")
        if path not in self.unix:
            self.unix[path] = client_session(aiohttp.UnixConnector(path=path, limit=0))
        return self.unix[path], "http://localhost"

    async def live(self) -> list[Endpoint]:
        live = []
        for session, base in map(self.endpoint, self.addresses()):
            try:
                timeout = aiohttp.ClientTimeout(total=2)
                async with session.get(base + "/stats", timeout=timeout) as r:
                    if r.status == 200:
                        live.append((session, base))
            except (aiohttp.ClientError, TimeoutError, OSError):
                continue
        return live

    async def close(self) -> None:
        for session in self.unix.values():
            await session.close()


async def open_streams(servers: list[Endpoint]) -> int:
    total = 0
    for session, base in servers:
        async with session.get(base + "/stats") as r:
            total += int((await r.json())["open"])
    return total


# ---- measuring ------------------------------------------------------------------------------


def client_session(connector: aiohttp.BaseConnector | None = None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector or aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
    )


class Recorder:
    """Lags (ns) of events received while ``on``; the readers only append."""

    def __init__(self) -> None:
        self.on = False
        self.lags: list[int] = []
        self.events = 0


async def read_ticks(resp: aiohttp.ClientResponse, rec: Recorder) -> None:
    """Read ``data: <monotonic ns>`` events until the stream ends; record each one's lag."""
    carry = b""
    read = resp.content.readany
    while chunk := await read():
        now = time.monotonic_ns()
        *events, carry = (carry + chunk).split(b"\n\n")
        if not rec.on:
            continue
        for event in events:
            if event[:6] == b"data: ":
                rec.lags.append(now - int(event[6:]))
                rec.events += 1


async def delay_round(session: aiohttp.ClientSession, base: str, plan: Plan) -> list[int]:
    """``delay_streams`` streams of ticks; lags are recorded once every stream is open."""
    count = int(plan.delay_seconds / plan.delay_interval)
    url = f"{base}/ticks?interval={plan.delay_interval}&count={count}"
    rec = Recorder()
    opened = 0
    all_open = asyncio.Event()

    async def one() -> None:
        nonlocal opened
        async with session.get(url) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{url}: {resp.status}")
            await resp.content.readany()  # ": ok"
            opened += 1
            if opened == plan.delay_streams:
                all_open.set()
            await read_ticks(resp, rec)

    async with asyncio.timeout(plan.delay_seconds + 30), asyncio.TaskGroup() as tg:
        for _ in range(plan.delay_streams):
            tg.create_task(one())
        await all_open.wait()
        rec.on = True
    return rec.lags


async def measure_delay(
    session: aiohttp.ClientSession, gateway: str, direct: Endpoint, plan: Plan
) -> dict[str, Any]:
    through_url = f"{gateway}/function/{STREAM_FN}"
    warm = Plan(quick=True, delay_seconds=1.0)
    await delay_round(*direct, warm)
    await delay_round(session, through_url, warm)
    lags: dict[str, list[int]] = {"direct": [], "through": []}
    for _ in range(plan.delay_rounds):
        lags["direct"] += await delay_round(*direct, plan)
        lags["through"] += await delay_round(session, through_url, plan)
    ms = {k: [v / 1e6 for v in vals] for k, vals in lags.items()}
    out: dict[str, Any] = {
        "streams": plan.delay_streams,
        "events_per_stream_per_s": round(1 / plan.delay_interval),
        "events": {k: len(v) for k, v in ms.items()},
    }
    for k, v in ms.items():
        out[f"{k}_ms"] = {"p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99), "max": max(v)}
    out["added_p50_ms"] = out["through_ms"]["p50"] - out["direct_ms"]["p50"]
    out["added_p99_ms"] = out["through_ms"]["p99"] - out["direct_ms"]["p99"]
    return out


async def burst_run(session: aiohttp.ClientSession, base: str, streams: int, plan: Plan) -> float:
    """Aggregate events/s over ``streams`` back-to-back streams of ``burst_size``-byte events."""
    url = f"{base}/burst?seconds={plan.burst_seconds}&size={plan.burst_size}"

    async def one() -> int:
        received = 0
        async with session.get(url) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{url}: {resp.status}")
            read = resp.content.readany
            while chunk := await read():
                received += len(chunk)
        return received - len(b": ok\n\n")

    started = time.monotonic()
    async with asyncio.timeout(plan.burst_seconds + 30):
        sizes = await asyncio.gather(*(one() for _ in range(streams)))
    return sum(sizes) / plan.burst_size / (time.monotonic() - started)


async def measure_burst(
    session: aiohttp.ClientSession, gateway: str, direct: Endpoint, plan: Plan
) -> dict[str, Any]:
    through_url = f"{gateway}/function/{STREAM_FN}"
    out: dict[str, Any] = {"event_bytes": plan.burst_size, "seconds": plan.burst_seconds}
    for streams in plan.burst_streams:
        d = await burst_run(*direct, streams, plan)
        t = await burst_run(session, through_url, streams, plan)
        out[f"streams_{streams}"] = {
            "direct_eps": round(d),
            "through_eps": round(t),
            "ratio": t / d,
        }
    return out


async def hold_level(
    session: aiohttp.ClientSession,
    gw: Gateway,
    servers: list[Endpoint],
    requested: int,
    idle_rss: int,
    plan: Plan,
    wd_idle: int | None = None,
) -> dict[str, Any]:
    # Each stream costs the gateway two descriptors (client side + upstream side): size the level
    # so that the gateway process stays inside its RLIMIT_NOFILE.
    room = (fd_limit(gw.pid) - fd_count(gw.pid) - FD_MARGIN) // 2
    n = min(requested, room)
    url = f"{gw.url}/function/{STREAM_FN}/ticks?interval=1&count=0"
    rec = Recorder()
    sem = asyncio.Semaphore(OPEN_CONCURRENCY)
    counts = {"opened": 0, "open_failed": 0, "ended_early": 0}
    settled = asyncio.Event()
    errors: dict[str, int] = {}

    def note_settled() -> None:
        if counts["opened"] + counts["open_failed"] >= n:
            settled.set()

    async def one() -> None:
        opened = False
        try:
            async with sem:
                resp = await session.get(url)
                try:
                    if resp.status != 200:
                        raise RuntimeError(f"status {resp.status}")
                    await resp.content.readany()  # ": ok": the whole chain is open
                except BaseException:
                    resp.close()
                    raise
            opened = True
            counts["opened"] += 1
            note_settled()
            try:
                await read_ticks(resp, rec)
                counts["ended_early"] += 1
            finally:
                resp.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # counted, not fatal: the level reports how many it held
            key = exc.__class__.__name__
            errors[key] = errors.get(key, 0) + 1
            if not opened:
                counts["open_failed"] += 1
                note_settled()
            else:
                counts["ended_early"] += 1

    watchdogs = [
        p for p in function_pids(gw.pid, STREAM_FN) if b"streamfaas.watchdog" in cmdline(p)
    ]
    if wd_idle is None:
        wd_idle = sum(rss_kb(p) for p in watchdogs)
    tasks = [asyncio.create_task(one()) for _ in range(n)]
    t0 = time.monotonic()
    rss_samples: list[int] = []
    wd_samples: list[int] = []
    try:
        async with asyncio.timeout(120):
            await settled.wait()
        open_s = time.monotonic() - t0
        await asyncio.sleep(plan.hold_settle)
        gc.disable()  # the client's own collections would show up as lag
        rec.on = True
        end = time.monotonic() + plan.hold_window
        while time.monotonic() < end:
            await asyncio.sleep(0.5)
            rss_samples.append(rss_kb(gw.pid))
            wd_samples.append(sum(rss_kb(p) for p in watchdogs))
        rec.on = False
        gc.enable()
        held = counts["opened"] - counts["ended_early"]
        gw_fds = fd_count(gw.pid)
    finally:
        gc.enable()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # The client has gone: every hop must let go of its streams.
    t1 = time.monotonic()
    await poll(lambda: _none_open(servers), 60, "function servers to close their streams", 0.1)
    close_s = time.monotonic() - t1
    lags_ms = [v / 1e6 for v in rec.lags]
    rss = max(rss_samples)
    return {
        "requested": requested,
        "held": held,
        "fd_room": room,
        "open_s": round(open_s, 2),
        "close_s": round(close_s, 2),
        "errors": errors,
        "events": len(lags_ms),
        "events_expected": round(held * plan.hold_window),
        "lag_p50_ms": pct(lags_ms, 50),
        "lag_p99_ms": pct(lags_ms, 99),
        "lag_max_ms": max(lags_ms) if lags_ms else float("nan"),
        "gateway_rss_idle_kb": idle_rss,
        "gateway_rss_kb": rss,
        "gateway_kb_per_stream": (rss - idle_rss) / held if held else float("nan"),
        "gateway_fds": gw_fds,
        "watchdogs_kb_per_stream": (max(wd_samples) - wd_idle) / held if held else float("nan"),
    }


async def _none_open(servers: list[Endpoint]) -> bool:
    return await open_streams(servers) == 0


async def measure_hold(
    session: aiohttp.ClientSession, api: Api, gw: Gateway, servers: FunctionServers, plan: Plan
) -> dict[str, Any]:
    if plan.hold_replicas > 1:
        await api.scale(STREAM_FN, plan.hold_replicas)
        await api.wait_ready(STREAM_FN, plan.hold_replicas)
    urls = await servers.live()
    # A few streams first, so that what the first stream allocates once is in the idle figure.
    await delay_round(
        session, f"{gw.url}/function/{STREAM_FN}", Plan(quick=True, delay_seconds=0.3)
    )
    await asyncio.sleep(0.5)
    idle = rss_kb(gw.pid)
    wd_pids = [p for p in function_pids(gw.pid, STREAM_FN) if b"streamfaas.watchdog" in cmdline(p)]
    wd_idle = sum(rss_kb(p) for p in wd_pids)
    levels = []
    for n in plan.hold_levels:
        levels.append(await hold_level(session, gw, urls, n, idle, plan, wd_idle))
    return {
        "replicas": plan.hold_replicas,
        "events_per_stream_per_s": 1,
        "window_s": plan.hold_window,
        "gateway_fd_limit": fd_limit(gw.pid),
        "levels": levels,
    }


async def measure_cold(
    session: aiohttp.ClientSession, api: Api, gw: Gateway, plan: Plan
) -> dict[str, Any]:
    url = f"{gw.url}/function/{COLD_FN}"
    samples = []
    headers_ms = []
    for _ in range(plan.cold_reps):
        await api.scale(COLD_FN, 0)

        async def gone() -> bool:
            return not function_pids(gw.pid, COLD_FN) and await api.available(COLD_FN) == 0

        await poll(gone, 30, f"{COLD_FN}'s processes to exit")
        t0 = time.perf_counter()
        async with asyncio.timeout(30), session.get(url) as resp:
            t_headers = time.perf_counter()
            first = await resp.content.readany()
            t1 = time.perf_counter()
            if resp.status != 200 or not first:
                raise RuntimeError(f"cold start: {resp.status} {first!r}")
            await resp.read()
        samples.append((t1 - t0) * 1000)
        headers_ms.append((t_headers - t0) * 1000)
    return {
        "function": f"{COLD_FN} (python3-flask)",
        "samples_ms": [round(s, 1) for s in samples],
        "p50_ms": pct(samples, 50),
        "min_ms": min(samples),
        "max_ms": max(samples),
        "headers_ms": [round(s, 1) for s in headers_ms],
    }


async def measure_redeploy(
    session: aiohttp.ClientSession,
    api: Api,
    gw: Gateway,
    state_dir: Path,
    plan: Plan,
    venv_build_s: float,
) -> dict[str, Any]:
    url = f"{gw.url}/function/{REDEPLOY_FN}"
    venvs_before = sorted(p.name for p in (state_dir / "venvs").iterdir())
    serving, returned = [], []
    for i in range(1, plan.redeploy_reps + 1):
        version = f"v{i}"

        async def serves_new(version: str = version) -> bool:
            async with session.get(url) as r:
                return r.status == 200 and await r.text() == version

        t0 = time.perf_counter()
        post = asyncio.create_task(api.deploy(deployment(REDEPLOY_FN, version)))
        await poll(serves_new, 60, f"{REDEPLOY_FN} to serve {version}", 0.01)
        serving.append(time.perf_counter() - t0)
        await post
        returned.append(time.perf_counter() - t0)
    venvs_after = sorted(p.name for p in (state_dir / "venvs").iterdir())
    return {
        "function": f"{REDEPLOY_FN} (python3-flask, requirements.txt)",
        "samples_s": [round(s, 3) for s in serving],
        "p50_s": pct(serving, 50),
        "post_returned_s": [round(s, 3) for s in returned],
        "venv_reused": venvs_before == venvs_after,
        "venv_first_build_s": round(venv_build_s, 2),
    }


# ---- the run --------------------------------------------------------------------------------


async def run_all(gw: Gateway, state_dir: Path, plan: Plan) -> dict[str, Any]:
    async with client_session() as session:
        servers = FunctionServers(session, state_dir, STREAM_FN)
        try:
            return await run_sections(session, servers, gw, state_dir, plan)
        finally:
            await servers.close()


async def run_sections(
    session: aiohttp.ClientSession,
    servers: FunctionServers,
    gw: Gateway,
    state_dir: Path,
    plan: Plan,
) -> dict[str, Any]:
    api = Api(session, gw)
    t0 = time.monotonic()
    await api.deploy(deployment(STREAM_FN))
    await api.deploy(deployment(COLD_FN))
    await api.deploy(deployment(REDEPLOY_FN, "v0"))  # builds its venv (pip, offline)
    venv_build_s = time.monotonic() - t0
    for name in (STREAM_FN, COLD_FN, REDEPLOY_FN):
        await api.wait_ready(name)
    direct = (await servers.live())[0]
    gc.collect()
    gc.freeze()
    # The local provider runs function servers under bubblewrap when it can.
    sandboxed = any(cmdline(p).split(b"\0", 1)[0].endswith(b"bwrap") for p in descendants(gw.pid))
    sections: list[tuple[str, str, Callable[[], Awaitable[dict[str, Any]]]]] = [
        (
            "added_delay",
            "1/5 added delay, 100 streams",
            lambda: measure_delay(session, gw.url, direct, plan),
        ),
        (
            "throughput",
            "3/5 back-to-back events/s",
            lambda: measure_burst(session, gw.url, direct, plan),
        ),
        (
            "streams_held",
            f"2/5 streams held: {', '.join(map(str, plan.hold_levels))}",
            lambda: measure_hold(session, api, gw, servers, plan),
        ),
        ("cold_start", "4/5 cold start", lambda: measure_cold(session, api, gw, plan)),
        (
            "redeploy",
            "5/5 redeploy",
            lambda: measure_redeploy(session, api, gw, state_dir, plan, venv_build_s),
        ),
    ]
    results: dict[str, Any] = {}
    meter = CpuMeter()
    for key, title, measure in sections:
        step(title)
        start = meter.snapshot()
        results[key] = await measure()
        meter.record(key, start)
        if meter.sections[key] > 10:
            step(f"warning: other processes used {meter.sections[key]}% of the CPUs meanwhile")
    results["other_cpu_pct"] = meter.sections
    results["functions_sandboxed"] = sandboxed
    results["function_server_address"] = servers.addresses()[0].split(":", 1)[0]
    return results


def verdicts(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float, unit: str, target: str, met: bool) -> None:
        rows.append(
            {"figure": name, "value": value, "unit": unit, "target": target, "met": bool(met)}
        )

    d = r["added_delay"]
    add(
        "added delay p50 (100 streams)",
        d["added_p50_ms"],
        "ms",
        "<= 0.3 ms",
        d["added_p50_ms"] <= 0.3,
    )
    add("added delay p99 (100 streams)", d["added_p99_ms"], "ms", "<= 2 ms", d["added_p99_ms"] <= 2)
    for lvl in r["streams_held"]["levels"]:
        req = lvl["requested"]
        add(f"streams held of {req}", lvl["held"], "streams", f"= {req}", lvl["held"] >= req)
        add(
            f"lag p99 @ {lvl['held']} streams",
            lvl["lag_p99_ms"],
            "ms",
            "<= 100 ms",
            lvl["lag_p99_ms"] <= 100,
        )
        add(
            f"gateway RSS/stream @ {lvl['held']}",
            lvl["gateway_kb_per_stream"],
            "KiB",
            "<= 20 KiB",
            lvl["gateway_kb_per_stream"] <= 20,
        )
    for key, t in r["throughput"].items():
        if key.startswith("streams_"):
            n = key.split("_")[1]
            add(
                f"events/s through/direct, {n} stream(s)",
                t["ratio"] * 100,
                "%",
                ">= 50 %",
                t["ratio"] >= 0.5,
            )
    c = r["cold_start"]
    add(
        "cold start p50 (scale from 0, 1st byte)",
        c["p50_ms"],
        "ms",
        "<= 300 ms",
        c["p50_ms"] <= 300,
    )
    rd = r["redeploy"]
    add(
        "redeploy p50 (warm deps, new version serves)", rd["p50_s"], "s", "<= 2 s", rd["p50_s"] <= 2
    )
    return rows


def print_table(rows: list[dict[str, Any]], r: dict[str, Any]) -> None:
    width = max(len(row["figure"]) for row in rows)
    print(f"\n{'figure':<{width}}  {'value':>12}  {'target':<12}  result")
    print("-" * (width + 38))
    for row in rows:
        value = (
            f"{row['value']:.3g} {row['unit']}" if row["unit"] != "streams" else str(row["value"])
        )
        print(
            f"{row['figure']:<{width}}  {value:>12}  {row['target']:<12}  {'met' if row['met'] else 'MISSED'}"
        )
    d = r["added_delay"]
    print(
        f"\nper-event lag, 100 streams: direct p50 {d['direct_ms']['p50']:.3f} / p99 {d['direct_ms']['p99']:.3f} ms,"
        f" through p50 {d['through_ms']['p50']:.3f} / p99 {d['through_ms']['p99']:.3f} ms"
    )
    for key, t in r["throughput"].items():
        if key.startswith("streams_"):
            print(
                f"events/s, {key.split('_')[1]} stream(s): direct {t['direct_eps']:,}  through {t['through_eps']:,}"
            )
    for lvl in r["streams_held"]["levels"]:
        print(
            f"hold {lvl['held']}/{lvl['requested']}: open {lvl['open_s']} s, lag p50 {lvl['lag_p50_ms']:.2f} ms,"
            f" gateway {lvl['gateway_rss_kb'] / 1024:.1f} MiB (idle {lvl['gateway_rss_idle_kb'] / 1024:.1f}),"
            f" {lvl['gateway_fds']} fds, watchdogs {lvl['watchdogs_kb_per_stream']:.1f} KiB/stream,"
            f" events {lvl['events']}/{lvl['events_expected']}, errors {lvl['errors'] or 0}"
        )
    print(f"cold start samples (ms): {r['cold_start']['samples_ms']}")
    print(
        f"redeploy samples (s): {r['redeploy']['samples_s']} (POST returned: {r['redeploy']['post_returned_s']})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller run (~1 minute): 1,000 streams only"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to SECONDS until other processes use <10%% of the CPUs",
    )
    parser.add_argument(
        "--keep-state", action="store_true", help="keep the state directory (logs) afterwards"
    )
    parser.add_argument(
        "--no-sandbox", action="store_true", help="start the gateway with --no-sandbox"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"default {RESULTS}")
    args = parser.parse_args()
    plan = Plan.make(args.quick)
    nofile = raise_fd_limit()  # the gateway and its replicas inherit it
    other_at_start = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="streamfaas-bench-"))
    state_dir = tmp / "state"
    state_dir.mkdir()
    gw = Gateway(state_dir, *(["--no-sandbox"] if args.no_sandbox else []))
    code = code_under_test()
    results: dict[str, Any] | None = None
    try:
        build_images(state_dir, tmp)
        gw.start()
        print(
            f"bench_core: gateway {gw.url} (state {state_dir}, RLIMIT_NOFILE {nofile}),"
            f" streamfaas from {code['streamfaas']} ({code['commit']}{'+dirty' if code['dirty'] else ''})",
            file=sys.stderr,
        )
        results = uvloop.run(run_all(gw, state_dir, plan))
    finally:
        gw.stop()
        if args.keep_state:
            print(f"state kept in {state_dir}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    rows = verdicts(results)
    print_table(rows, results)
    if gw.orphans:
        print(
            f"WARNING: {len(gw.orphans)} process(es) outlived the gateway and were killed",
            file=sys.stderr,
        )
    out = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": plan.quick,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine(aiohttp=aiohttp.__version__, uvloop=uvloop.__version__),
        "code": code,
        "rlimit_nofile": nofile,
        "other_cpu_pct_at_start": other_at_start,
        "orphans": len(gw.orphans),
        "targets": rows,
        "results": results,
    }
    write_results(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
