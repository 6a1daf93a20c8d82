"""How much of the machine other processes use while a bench runs: the client, gateway,
watchdogs, function servers (and model) share the machine's cores, so anything else running
meanwhile skews the figures. Every bench reports it next to what it measured."""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections import deque

from benchlib import descendants


def _own_tree_ticks(pids: set[int]) -> dict[int, int]:
    """utime + stime of each process (children's are counted with each child, not the parent)."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = int(fields[11]) + int(fields[12])
    return out


class CpuWatch:
    """How much of the machine other processes (not this bench and what it started) use.

    The client, gateway, watchdogs, function servers (and model) share the machine's cores, so
    anything else running meanwhile skews the figures. ``mark(phase)`` closes the interval since
    the last sample and accounts what follows to ``phase``; ``start()`` adds a thread that
    samples every ``interval`` s (bench_chat, which retries rounds that ran beside other work).
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.phase = "setup"
        self.phases: dict[str, dict[str, float]] = {}
        self.recent_other_pct = 0.0  # other processes' share of the CPUs in the last interval
        self.ticks: deque[tuple[float, float]] = deque(maxlen=4000)  # (monotonic, other %)
        self.quiet_budget = 0.0  # seconds wait_quiet may still spend, in all
        self.waited = 0.0
        self._hz = os.sysconf("SC_CLK_TCK")
        self._cpus = len(os.sched_getaffinity(0))
        self._seen: dict[int, int] = {}
        self._lock = threading.Lock()
        self._last = self._sample_counters()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample_counters(self) -> tuple[float, float, float, float]:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (
                int(x) for x in f.readline().split()[1:9]
            )
        now = _own_tree_ticks({os.getpid(), *descendants(os.getpid())})
        ours = sum(t - self._seen.get(pid, 0) for pid, t in now.items())
        self._seen.update(now)
        busy = (user + nice + system + irq + softirq) / self._hz
        return time.monotonic(), busy, steal / self._hz, ours / self._hz

    def sample(self) -> None:
        with self._lock:
            now, busy, steal, ours = self._sample_counters()
            then, busy0, steal0, _ = self._last
            self._last = (now, busy, steal, 0.0)
            acc = self.phases.setdefault(
                self.phase, {"wall": 0.0, "busy": 0.0, "ours": 0.0, "steal": 0.0}
            )
            acc["wall"] += now - then
            acc["busy"] += busy - busy0
            acc["ours"] += ours
            acc["steal"] += steal - steal0
            capacity = max((now - then) * self._cpus, 1e-9)
            self.recent_other_pct = 100 * max(busy - busy0 - ours, 0.0) / capacity
            self.ticks.append((now, self.recent_other_pct))

    def mark(self, phase: str) -> None:
        self.sample()
        self.phase = phase

    def other_pct(self, phase: str) -> float:
        acc = self.phases.get(phase)
        if not acc or not acc["wall"]:
            return 0.0
        return round(100 * max(acc["busy"] - acc["ours"], 0.0) / (acc["wall"] * self._cpus), 1)

    def report(self) -> dict[str, dict[str, float]]:
        """Per phase, as % of the machine's capacity (CPUs × wall time)."""
        out = {}
        for phase, acc in self.phases.items():
            capacity = max(acc["wall"] * self._cpus, 1e-9)
            out[phase] = {
                "seconds": round(acc["wall"], 1),
                "busy_pct": round(100 * acc["busy"] / capacity, 1),
                "benchmark_pct": round(100 * min(acc["ours"], acc["busy"]) / capacity, 1),
                "other_processes_pct": self.other_pct(phase),
                "steal_pct": round(100 * acc["steal"] / capacity, 1),
            }
        return out

    def start(self) -> CpuWatch:
        def run() -> None:
            while not self._stop.wait(self.interval):
                self.sample()

        self._thread = threading.Thread(target=run, name="cpu-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def other_pct_since(self, started: float) -> float:
        """Other processes' mean share of the CPUs (%) over the samples since ``started``
        (``time.monotonic()``), or the last sample's if none came since."""
        shares = [pct for at, pct in list(self.ticks) if at >= started]
        return statistics.fmean(shares) if shares else self.recent_other_pct

    async def wait_quiet(self, threshold_pct: float, longest: float, *, budget: bool) -> None:
        """While other processes hold more than ``threshold_pct`` of the CPUs, wait (at most
        ``longest`` s, and with ``budget`` at most ``quiet_budget`` s over the whole run)."""
        started = time.monotonic()
        deadline = started + (min(longest, self.quiet_budget) if budget else longest)
        # recent_other_pct is written by the sampling thread: polled, not awaited.
        while time.monotonic() < deadline and self.recent_other_pct > threshold_pct:  # noqa: ASYNC110
            await asyncio.sleep(self.interval)
        spent = time.monotonic() - started
        if budget:
            self.quiet_budget = max(0.0, self.quiet_budget - spent)
        self.waited += spent


def wait_quiet(limit_s: float, threshold_pct: float = 10.0) -> float:
    """Wait (at most ``limit_s``) until other processes use under ``threshold_pct`` of the CPUs
    for one second; returns what they used in the last second sampled."""
    watch = CpuWatch()
    deadline = time.monotonic() + limit_s
    while True:
        time.sleep(1.0)
        watch.sample()
        if watch.recent_other_pct < threshold_pct or time.monotonic() > deadline:
            return round(watch.recent_other_pct, 1)
