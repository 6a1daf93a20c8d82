"""The harness the benches share: the machine they ran on, the code under test, a gateway in its
own process group, /proc readings, CPU used by others, percentiles and the JSON they write."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from platform_fixture import alive, descendants  # noqa: E402


def machine(**extra: Any) -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 2**20, 1),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "commit": commit,
        **extra,
    }


def write_results(path: Path, out: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    shown = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
    print(f"\nwrote {shown} ({out.get('duration_s', '?')} s)")


def code_under_test() -> dict[str, Any]:
    """Where the processes a bench starts import streamfaas from (asked of a spawned interpreter,
    which sees this process's PYTHONPATH), and that tree's commit: another checkout can be
    measured with the same bench by putting its ``src`` first on PYTHONPATH."""
    file = subprocess.run(
        [sys.executable, "-c", "import streamfaas; print(streamfaas.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tree = str(Path(file).parent)

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", tree, *args], capture_output=True, text=True).stdout

    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "."))
    return {
        "streamfaas": file,
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "dirty": dirty,
    }


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def fd_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise RuntimeError("no fd limit")


class CpuMeter:
    """How much CPU other processes (not this bench and what it started) used, per section.

    The client, gateway, watchdogs and function servers share the machine's cores, so anything
    else that runs meanwhile skews the figures; the JSON reports it next to each section.
    """

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.cores = os.cpu_count() or 1
        self.sections: dict[str, float] = {}

    def _machine_busy(self) -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) / self.tick  # all but idle and iowait (steal included)

    def _ours(self) -> float:
        total = 0
        for pid in {os.getpid(), *descendants(os.getpid())}:
            fields = _stat_fields(pid)
            if fields is not None:
                total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        return total / self.tick

    def snapshot(self) -> tuple[float, float, float]:
        return time.monotonic(), self._machine_busy(), self._ours()

    def record(self, name: str, start: tuple[float, float, float]) -> None:
        wall, busy, ours = (b - a for a, b in zip(start, self.snapshot(), strict=True))
        self.sections[name] = round(max(busy - ours, 0.0) / (wall * self.cores) * 100, 1)


def wait_quiet(limit_s: float, threshold_pct: float = 10.0) -> float:
    """Wait (at most ``limit_s``) until other processes use under ``threshold_pct`` of the CPUs
    for one second; returns what they used in the last second sampled."""
    meter = CpuMeter()
    deadline = time.monotonic() + limit_s
    while True:
        start = meter.snapshot()
        time.sleep(1.0)
        meter.record("idle", start)
        if meter.sections["idle"] < threshold_pct or time.monotonic() > deadline:
            return meter.sections["idle"]


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Gateway:
    """``streamfaas gateway --port 0 --port-file`` in its own process group, with its replicas."""

    def __init__(self, state_dir: Path, *args: str) -> None:
        self.state_dir = state_dir
        self.args = args  # more gateway flags, e.g. --no-sandbox
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.auth: aiohttp.BasicAuth | None = None
        self.orphans: list[int] = []

    def start(self) -> None:
        port_file = self.state_dir / "gateway.port"
        log = open(self.state_dir / "gateway.log", "ab")  # noqa: SIM115 - the child holds it
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streamfaas.cli",
                    "--state-dir",
                    str(self.state_dir),
                    "gateway",
                    "--port",
                    "0",
                    "--port-file",
                    str(port_file),
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.state_dir,
            )
        finally:
            log.close()
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start; see {self.state_dir / 'gateway.log'}")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        password_file = self.state_dir / "auth" / "admin-password"  # basic auth on /system/*
        if password_file.exists():
            self.auth = aiohttp.BasicAuth("admin", password_file.read_text().strip())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM the gateway's group (it drains and stops its replicas); SIGKILL what is left."""
        proc = self.proc
        if proc is None:
            return
        below = descendants(proc.pid)
        if proc.poll() is None:
            _killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.proc = None
        deadline = time.monotonic() + 10
        while any(alive(p) for p in below) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.orphans = [p for p in below if alive(p)]
        for pid in self.orphans:  # each replica runs in its own process group
            _killpg(pid, signal.SIGKILL)


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---- functions ------------------------------------------------------------------------------


async def poll(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def step(text: str) -> None:
    print(f"  … {text}", file=sys.stderr, flush=True)
