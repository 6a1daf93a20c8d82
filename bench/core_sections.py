"""The five measurements of bench_core.py, against bench/core_server.py behind the platform,
and the plan that sizes them (``--quick`` or not). bench_core.py starts the gateway, deploys the
functions, runs these in order and prints the table."""

from __future__ import annotations

import asyncio
import gc
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

from benchlib import (
    Api,
    Endpoint,
    FunctionServers,
    Gateway,
    cli,
    fd_count,
    fd_limit,
    function_pids,
    pct,
    poll,
    rss_kb,
    watchdog_pids,
)

STREAM_FN = "sfstream"  # bench/core_server.py (aiohttp) behind a watchdog
COLD_FN = "sfcold"  # python3-flask hello
REDEPLOY_FN = "sfredeploy"  # python3-flask with a requirements.txt
OPEN_CONCURRENCY = 200  # streams being opened at once in the hold test (stays under the backlog)
FD_MARGIN = 64  # gateway fds kept free when sizing the largest hold level
# A held stream delivered every event sent up to this long before the window closed.
LATE_S = 1.0


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
    redeploy_reps: int = 3  # of each kind: env change, changed handler

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

    def warm_up(self, seconds: float) -> Plan:
        return replace(self, delay_seconds=seconds)


def core_server_folder(work: Path, name: str) -> Path:
    """A function folder whose server is bench/core_server.py (deployed with
    ``envProcess: python function/core_server.py``; the handler is never called)."""
    folder = work / name
    folder.mkdir(exist_ok=True)
    shutil.copy2(Path(__file__).resolve().parent / "core_server.py", folder / "core_server.py")
    (folder / "handler.py").write_text("def handle(req):\n    return ''\n")
    return folder


def deployment(name: str, version: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"service": name, "image": f"{name}:latest", "envVars": extra_env()}
    if name == STREAM_FN:
        body["envProcess"] = "python function/core_server.py"
    if version:
        body["envVars"]["BENCH_VERSION"] = version
    return body


def extra_env() -> dict[str, str]:
    env = {"drain_timeout": "2s"}
    if os.environ.get("PYTHONPATH"):
        # Measuring another checkout: before issue 9 a deployment's envVars reached the watchdog
        # (now they reach the function process only, and the watchdog runs with ``-I``).
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


# ---- reading tick streams -------------------------------------------------------------------


class Tally:
    """One stream's ticks so far: the last sequence number, its send time, and gaps."""

    __slots__ = ("seq", "sent_ns", "gaps", "open")

    def __init__(self) -> None:
        self.seq = 0
        self.sent_ns = 0
        self.gaps = 0
        self.open = False


class Recorder:
    """Lags (ns) of events received while ``on``; the readers only append."""

    def __init__(self) -> None:
        self.on = False
        self.lags: list[int] = []


async def read_ticks(
    resp: aiohttp.ClientResponse, rec: Recorder, tally: Tally, first: bytes
) -> None:
    """Read ``data: <monotonic ns> <n>`` events until the stream ends (``first``: what was read
    with the ``: ok``): count each stream's events and gaps; record lags while ``rec.on``."""
    carry = b""
    chunk = first
    read = resp.content.readany
    while chunk:
        now = time.monotonic_ns()
        *events, carry = (carry + chunk).split(b"\n\n")
        for event in events:
            if event[:6] != b"data: ":
                continue
            sent, seq = event[6:].split(b" ")
            tally.sent_ns = int(sent)
            seq_no = int(seq)
            if seq_no != tally.seq + 1:
                tally.gaps += 1
            tally.seq = seq_no
            if rec.on:
                rec.lags.append(now - tally.sent_ns)
        chunk = await read()


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
            first = await resp.content.readany()  # ": ok"
            opened += 1
            if opened == plan.delay_streams:
                all_open.set()
            tally = Tally()
            await read_ticks(resp, rec, tally, first)
            if tally.gaps or tally.seq != count:
                raise RuntimeError(f"{url}: {tally.seq} of {count} events, {tally.gaps} gap(s)")

    async with asyncio.timeout(plan.delay_seconds + 30), asyncio.TaskGroup() as tg:
        for _ in range(plan.delay_streams):
            tg.create_task(one())
        await all_open.wait()
        rec.on = True
    return rec.lags


async def measure_delay(
    session: aiohttp.ClientSession, gw: Gateway, direct: Endpoint, plan: Plan
) -> dict[str, Any]:
    through = gw.function_url(STREAM_FN)
    await delay_round(*direct, plan.warm_up(1.0))
    await delay_round(session, through, plan.warm_up(1.0))
    lags: dict[str, list[int]] = {"direct": [], "through": []}
    for _ in range(plan.delay_rounds):
        lags["direct"] += await delay_round(*direct, plan)
        lags["through"] += await delay_round(session, through, plan)
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
    session: aiohttp.ClientSession, gw: Gateway, direct: Endpoint, plan: Plan
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_bytes": plan.burst_size,
        "seconds": plan.burst_seconds,
        "streams": list(plan.burst_streams),
    }
    for streams in plan.burst_streams:
        d = await burst_run(*direct, streams, plan)
        t = await burst_run(session, gw.function_url(STREAM_FN), streams, plan)
        out[f"streams_{streams}"] = {
            "direct_eps": round(d),
            "through_eps": round(t),
            "ratio": t / d,
        }
    return out


# ---- streams held -----------------------------------------------------------------------------


async def hold_level(
    session: aiohttp.ClientSession,
    gw: Gateway,
    servers: list[Endpoint],
    requested: int,
    idle: tuple[int, int],
    plan: Plan,
) -> dict[str, Any]:
    # Each stream costs the gateway two descriptors (client side + upstream side): size the level
    # so that the gateway process stays inside its RLIMIT_NOFILE.
    room = (fd_limit(gw.pid) - fd_count(gw.pid) - FD_MARGIN) // 2
    n = min(requested, room)
    url = f"{gw.function_url(STREAM_FN)}/ticks?interval=1&count=0"
    rec = Recorder()
    tallies = [Tally() for _ in range(n)]
    sem = asyncio.Semaphore(OPEN_CONCURRENCY)
    settled = asyncio.Event()
    counts = {"opened": 0, "open_failed": 0}
    errors: dict[str, int] = {}

    def note(outcome: str) -> None:
        counts[outcome] += 1
        if counts["opened"] + counts["open_failed"] >= n:
            settled.set()

    async def one(tally: Tally) -> None:
        opened = False
        try:
            async with sem:
                resp = await session.get(url)
                try:
                    if resp.status != 200:
                        raise RuntimeError(f"status {resp.status}")
                    first = await resp.content.readany()  # ": ok": the whole chain is open
                except BaseException:
                    resp.close()
                    raise
            tally.open = opened = True
            note("opened")
            try:
                await read_ticks(resp, rec, tally, first)
            finally:
                tally.open = False  # ended early (or cancelled after the window)
                resp.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # counted, not fatal: the level reports how many it held
            errors[exc.__class__.__name__] = errors.get(exc.__class__.__name__, 0) + 1
            if not opened:
                note("open_failed")

    watchdogs = watchdog_pids(gw.pid, STREAM_FN)
    tasks = [asyncio.create_task(one(t)) for t in tallies]
    t0 = time.monotonic()
    rss_samples: list[int] = []
    wd_samples: list[int] = []
    try:
        async with asyncio.timeout(120):
            await settled.wait()
        open_s = time.monotonic() - t0
        await asyncio.sleep(plan.hold_settle)
        gc.disable()  # the client's own collections would show up as lag
        at_start = [t.seq for t in tallies]
        window_start = time.monotonic_ns()
        rec.on = True
        end = time.monotonic() + plan.hold_window
        while time.monotonic() < end:
            await asyncio.sleep(0.5)
            rss_samples.append(rss_kb(gw.pid))
            wd_samples.append(sum(rss_kb(p) for p in watchdogs))
        rec.on = False
        window_end = time.monotonic_ns()
        gc.enable()
        # Held: still open, no sequence gap, and every event sent up to LATE_S before the window
        # closed has arrived (the last one received was sent after that event's due time).
        window_s = (window_end - window_start) / 1e9
        due = math.floor(window_s - LATE_S)  # events due in the window, at 1 event/s, any phase
        current_ns = window_end - int((1 + LATE_S) * 1e9)
        held = behind = with_gap = still_open = 0
        for tally, seq0 in zip(tallies, at_start, strict=True):
            if not tally.open:
                continue
            still_open += 1
            if tally.gaps:
                with_gap += 1
            elif tally.seq - seq0 < due or tally.sent_ns < current_ns:
                behind += 1
            else:
                held += 1
        gw_fds = fd_count(gw.pid)
    finally:
        gc.enable()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # The client has gone: every hop must let go of its streams.
    t1 = time.monotonic()
    await poll(lambda: none_open(servers), 60, "function servers to close their streams", 0.1)
    lags_ms = [v / 1e6 for v in rec.lags]
    rss = max(rss_samples)
    return {
        "requested": requested,
        "fd_room": room,
        "opened": counts["opened"],
        "open_at_end": still_open,
        "with_gap": with_gap,
        "behind": behind,
        "held": held,
        "window_s": round(window_s, 2),
        "events_due_per_stream": due,
        "open_s": round(open_s, 2),
        "close_s": round(time.monotonic() - t1, 2),
        "errors": errors,
        "events": len(lags_ms),
        "lag_p50_ms": pct(lags_ms, 50),
        "lag_p99_ms": pct(lags_ms, 99),
        "lag_max_ms": max(lags_ms) if lags_ms else float("nan"),
        "gateway_rss_idle_kb": idle[0],
        "gateway_rss_kb": rss,
        # Per stream open in the gateway (held or not: each costs it memory).
        "gateway_kb_per_stream": (rss - idle[0]) / still_open if still_open else float("nan"),
        "gateway_fds": gw_fds,
        "watchdogs_kb_per_stream": (max(wd_samples) - idle[1]) / still_open
        if still_open
        else float("nan"),
    }


async def none_open(servers: list[Endpoint]) -> bool:
    total = 0
    for session, base in servers:
        async with session.get(base + "/stats") as r:
            total += int((await r.json())["open"])
    return total == 0


async def measure_hold(
    session: aiohttp.ClientSession, api: Api, gw: Gateway, servers: FunctionServers, plan: Plan
) -> dict[str, Any]:
    if plan.hold_replicas > 1:
        await api.scale(STREAM_FN, plan.hold_replicas)
        await api.wait_ready(STREAM_FN, plan.hold_replicas)
    live = await servers.live()
    # A few streams first, so that what the first stream allocates once is in the idle figure.
    await delay_round(session, gw.function_url(STREAM_FN), plan.warm_up(0.3))
    await asyncio.sleep(0.5)
    idle = (rss_kb(gw.pid), sum(rss_kb(p) for p in watchdog_pids(gw.pid, STREAM_FN)))
    levels = [await hold_level(session, gw, live, n, idle, plan) for n in plan.hold_levels]
    return {
        "replicas": plan.hold_replicas,
        "events_per_stream_per_s": 1,
        "window_s": plan.hold_window,
        "late_s": LATE_S,
        "gateway_fd_limit": fd_limit(gw.pid),
        "levels": levels,
    }


# ---- cold start and redeploy --------------------------------------------------------------------


async def measure_cold(
    session: aiohttp.ClientSession, api: Api, gw: Gateway, plan: Plan
) -> dict[str, Any]:
    url = gw.function_url(COLD_FN)
    samples, headers_ms = [], []

    async def gone() -> bool:
        return not function_pids(gw.pid, COLD_FN) and await api.available(COLD_FN) == 0

    for _ in range(plan.cold_reps):
        await api.scale(COLD_FN, 0)
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
    session: aiohttp.ClientSession, api: Api, gw: Gateway, folder: Path, plan: Plan
) -> dict[str, Any]:
    """Each change timed until a request returns the new answer (polled every 10 ms): an env
    var (``POST /system/functions``), then the handler itself (``streamfaas up``: the CLI builds
    the image and deploys it, as a developer would). The requirements never change, so the venv
    built by the first deploy is reused (``venv_reused``)."""
    url = gw.function_url(REDEPLOY_FN)
    stack = folder.parent / "stack.yaml"
    env_lines = "".join(f"      {k}: {v!r}\n" for k, v in extra_env().items())
    stack.write_text(
        f"version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  {REDEPLOY_FN}:\n"
        f"    lang: python3-flask\n    handler: ./{folder.name}\n    image: {REDEPLOY_FN}:latest\n"
        f"    environment:\n{env_lines}"
    )
    up = cli("--state-dir", str(gw.state_dir), "up", "-f", str(stack), "--gateway", gw.url)
    # No stored login may answer for this gateway: the CLI takes the state directory's password.
    cli_env = {**os.environ, "OPENFAAS_CONFIG": str(folder.parent / "openfaas")}

    async def env_change(version: str) -> float | None:
        await api.deploy(deployment(REDEPLOY_FN, version))
        return None

    async def handler_change(version: str) -> float | None:
        (folder / "handler.py").write_text(f"def handle(req):\n    return {version!r}\n")
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *up, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=cli_env
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"streamfaas up: exit {proc.returncode}: {err.decode()[-500:]}")
        return time.perf_counter() - started

    out: dict[str, Any] = {}
    for kind, change, apply in (
        ("env", "env var changed (POST /system/functions)", env_change),
        ("handler", "handler changed (streamfaas up: build + deploy)", handler_change),
    ):
        venvs_before = sorted(p.name for p in (gw.state_dir / "venvs").iterdir())
        serving, returned = [], []
        for i in range(1, plan.redeploy_reps + 1):
            version = f"{kind}{i}"

            async def serves(version: str = version) -> bool:
                async with session.get(url) as r:
                    return r.status == 200 and await r.text() == version

            t0 = time.perf_counter()
            task = asyncio.create_task(apply(version))
            await poll(serves, 60, f"{REDEPLOY_FN} to answer {version}", 0.01)
            serving.append(time.perf_counter() - t0)
            returned.append(await task or time.perf_counter() - t0)
        venvs_after = sorted(p.name for p in (gw.state_dir / "venvs").iterdir())
        out[kind] = {
            "change": change,
            "samples_s": [round(s, 3) for s in serving],
            "p50_s": pct(serving, 50),
            "returned_s": [round(s, 3) for s in returned],  # the POST's answer, or the CLI's exit
            "venv_reused": venvs_before == venvs_after,
        }
    return out
