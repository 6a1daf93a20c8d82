"""The harness the benches share: the code under test and the machine, the JSON every bench
writes, a gateway in its own process group and its /system API, the function servers behind
it, /proc readings, CPU used by other processes, percentiles and the table of targets."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

# The tests' process helpers, re-exported for the benches.
from platform_fixture import alive as alive  # noqa: E402
from platform_fixture import descendants as descendants  # noqa: E402

# ---- what was measured, where, and the JSON -------------------------------------------------


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
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 2**20, 1),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        **extra,
    }


def _git_state(folder: Path, *paths: str) -> dict[str, Any]:
    """The checkout's commit, and whether ``paths`` in it differ from it (untracked files too;
    ignored ones, such as __pycache__ and bench/results, do not count)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True
        ).stdout

    commit = git("rev-parse", "--short", "HEAD").strip()
    if not commit:  # not a git checkout (an unpacked copy, an installed package)
        return {"commit": None, "dirty": None, "changed": []}
    changed = [ln[3:] for ln in git("status", "--porcelain", "--", *paths).splitlines()]
    return {"commit": commit, "dirty": bool(changed), "changed": changed[:20]}


def code_under_test(first_on_path: Path | None = None) -> dict[str, Any]:
    """The commit (and a dirty flag) of the streamfaas the bench's processes import, and of the
    bench itself. The package is located by a spawned interpreter, which sees this process's
    PYTHONPATH (``first_on_path`` goes before it, as bench_llm's model server does): another
    checkout is measured with the same bench by putting its ``src`` first on PYTHONPATH."""
    env = dict(os.environ)
    if first_on_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(first_on_path), env.get("PYTHONPATH", "")) if p
        )
    file = subprocess.run(
        [sys.executable, "-c", "import streamfaas; print(streamfaas.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    package = Path(file).parent
    return {
        "streamfaas": str(package),
        **_git_state(package, "."),
        # The benches, the function servers they deploy and examples/chat come from here.
        "bench": _git_state(REPO, "bench", "examples"),
    }


def describe_code(code: dict[str, Any]) -> str:
    """``<path> (<commit>[+dirty])``, for a bench's first line."""
    commit = code["commit"] or "not a git checkout"
    return f"{code['streamfaas']} ({commit}{'+dirty' if code['dirty'] else ''})"


class Run:
    """One bench run: taken at its start, the date and the code under test; ``write`` puts them,
    the machine and the run's duration at the top of the bench's JSON, the same in every bench."""

    def __init__(self, first_on_path: Path | None = None) -> None:
        self.started = time.monotonic()
        self.date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.code = code_under_test(first_on_path)

    def write(self, path: Path, body: dict[str, Any], **machine_extra: Any) -> None:
        out = {
            "date": self.date,
            "duration_s": round(time.monotonic() - self.started, 1),
            "code": self.code,
            "machine": machine(**machine_extra),
            **body,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
        shown = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
        print(f"\nwrote {shown} ({out['duration_s']} s, code {describe_code(self.code)})")


# ---- /proc ----------------------------------------------------------------------------------


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def private_kb(pid: int) -> int:
    """Memory only ``pid`` holds (Private_Clean + Private_Dirty): what one more such process
    costs; RSS also counts the shared libraries' pages every such process shares."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        pass
    return total


def tcp_ext(*names: str) -> dict[str, int]:
    """Counters from /proc/net/netstat's TcpExt lines (``ListenOverflows``, ``ListenDrops``):
    system-wide, so read a delta around what you measure."""
    with open("/proc/net/netstat") as f:
        lines = [ln.split() for ln in f if ln.startswith("TcpExt:")]
    values = dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))
    return {name: values.get(name, 0) for name in names}


def memory(pids: list[int]) -> dict[str, int]:
    """RSS and private memory of ``pids`` together, in KiB."""
    return {"rss_kb": sum(map(rss_kb, pids)), "private_kb": sum(map(private_kb, pids))}


def listen_backlogs(tcp_port: int | None, unix_paths: Sequence[str]) -> dict[str, int]:
    """The effective backlog of each listener (``ss`` shows it as a listening socket's
    Send-Q): what the process asked for, capped by ``net.core.somaxconn``. -1: not found."""
    queries = [(str(p), ["-lx", f"src {p}"], 3) for p in unix_paths]
    if tcp_port is not None:
        queries.insert(0, (f"tcp:{tcp_port}", ["-ltn", f"sport = :{tcp_port}"], 2))
    out = {}
    for name, args, column in queries:
        ss = subprocess.run(["ss", "-H", *args], capture_output=True, text=True).stdout.split()
        out[name] = int(ss[column]) if len(ss) > column else -1
    return out


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def started_s(pid: int) -> float:
    """When ``pid`` started, in seconds on CLOCK_BOOTTIME (clock-tick resolution); 0 if gone."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0.0
    return ticks / os.sysconf("SC_CLK_TCK")


def parent_pid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def function_pids(gateway_pid: int, name: str) -> list[int]:
    """One function's watchdogs and every process below them. The function's own processes
    carry STREAMFAAS_FUNCTION in their environment; its watchdog is their ancestor that the
    gateway, or the gateway's watchdog fork server, started (a forked watchdog's
    /proc/PID/environ is the fork server's)."""
    below = descendants(gateway_pid)
    spawners = _spawners(gateway_pid, below)
    watchdogs = set()
    for pid in below:
        if environ(pid).get("STREAMFAAS_FUNCTION") != name:
            continue
        while pid and parent_pid(pid) not in spawners and parent_pid(pid) in below:
            pid = parent_pid(pid)
        if parent_pid(pid) in spawners:
            watchdogs.add(pid)
    return sorted({*watchdogs, *(c for w in watchdogs for c in descendants(w))})


def watchdog_pids(gateway_pid: int, name: str) -> list[int]:
    spawners = _spawners(gateway_pid, descendants(gateway_pid))
    return [p for p in function_pids(gateway_pid, name) if parent_pid(p) in spawners]


def _spawners(gateway_pid: int, below: set[int]) -> set[int]:
    """The gateway and its watchdog fork server (whose forked watchdogs share its cmdline)."""
    return {gateway_pid} | {
        p for p in below if parent_pid(p) == gateway_pid and b"fork_server" in cmdline(p)
    }


def listening_unix_sockets(pid: int) -> list[str]:
    """Paths of the Unix sockets ``pid`` listens on (its fds matched against /proc/net/unix)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return []
    paths = []
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            cols = line.split()
            # Flags 00010000: __SO_ACCEPTCON, a listening socket.
            if len(cols) > 7 and cols[6] in inodes and int(cols[3], 16) & 0x10000:
                paths.append(cols[7])
    return paths


# ---- the platform -----------------------------------------------------------------------------


class Gateway:
    """``streamfaas gateway --port 0 --port-file`` in its own process group, with its replicas."""

    def __init__(self, state_dir: Path, *args: str) -> None:
        self.state_dir = state_dir
        self.args = args  # more gateway flags, e.g. --no-sandbox
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.auth: aiohttp.BasicAuth | None = None
        self.orphans: list[int] = []

    def start(self) -> Gateway:
        port_file = self.state_dir / "gateway.port"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.state_dir / "gateway.log", "ab")  # noqa: SIM115 - the child holds it
        try:
            self.proc = subprocess.Popen(
                [
                    *cli("--state-dir", str(self.state_dir), "gateway"),
                    *("--port", "0", "--port-file", str(port_file), *self.args),
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
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def function_url(self, name: str) -> str:
        return f"{self.url}/function/{name}"

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


@contextmanager
def bench_gateway(prefix: str, args: argparse.Namespace) -> Iterator[tuple[Gateway, Path]]:
    """A started gateway of the bench's own (``platform_options``' --no-sandbox) in a fresh
    folder, and that folder for the bench's files; stopped on the way out, the folder removed
    unless --keep-state."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    gw = Gateway(tmp / "state", *(["--no-sandbox"] if args.no_sandbox else []))
    try:
        gw.start()
        yield gw, tmp
    finally:
        gw.stop()
        if args.keep_state:
            print(f"state kept in {gw.state_dir}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group that ``proc`` leads; SIGKILL it after 30 s."""
    if proc.poll() is None:
        _killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamfaas.cli", *args]


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def build_image(gw: Gateway, name: str, folder: Path, lang: str = "python3-flask") -> None:
    """``streamfaas build`` for one folder: the image ``NAME:latest`` in the gateway's state."""
    from streamfaas.provider.images import ImageStore

    ImageStore(gw.state_dir / "images").build(f"{name}:latest", lang, folder)


class Api:
    """The gateway's /system API (basic auth)."""

    def __init__(self, session: aiohttp.ClientSession, gw: Gateway) -> None:
        self.s = session
        self.url = gw.url
        self.headers = {"Authorization": gw.auth.encode()} if gw.auth else {}

    async def deploy(self, body: dict[str, Any]) -> None:
        url = f"{self.url}/system/functions"
        async with self.s.post(url, json=body, headers=self.headers) as r:
            if r.status != 202:
                raise RuntimeError(f"deploy {body['service']}: {r.status} {await r.text()}")

    async def scale(self, name: str, replicas: int) -> None:
        body = {"serviceName": name, "replicas": replicas}
        url = f"{self.url}/system/scale-function/{name}"
        async with self.s.post(url, json=body, headers=self.headers) as r:
            if r.status != 202:
                raise RuntimeError(f"scale {name}: {r.status} {await r.text()}")

    async def available(self, name: str) -> int:
        """Ready replicas; 0 while a deployment the gateway accepted is not listed yet."""
        url = f"{self.url}/system/function/{name}"
        async with self.s.get(url, headers=self.headers) as r:
            if r.status == 404:
                return 0
            if r.status != 200:
                raise RuntimeError(f"GET {url}: {r.status} {await r.text()}")
            return int((await r.json()).get("availableReplicas", 0))  # omitted when 0

    async def wait_ready(self, name: str, replicas: int = 1, timeout: float = 120) -> None:
        async def ready() -> bool:
            return await self.available(name) >= replicas

        await poll(ready, timeout, f"{name} to have {replicas} ready replica(s)")


def platform_options(parser: argparse.ArgumentParser, out: Path) -> None:
    """The options of a bench that starts its own gateway."""
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
    parser.add_argument("--out", type=Path, default=out, help="default: %(default)s")


def client_session(connector: aiohttp.BaseConnector | None = None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector or aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
    )


Endpoint = tuple[aiohttp.ClientSession, str]  # a session and the base URL to use with it


class FunctionServers:
    """One function's servers, reached around the gateway and the watchdog.

    Where each listens comes from its watchdog's "function NAME ready at ADDRESS" log line:
    ``http://127.0.0.1:PORT``, or ``unix:PATH`` since replicas stopped listening on TCP
    (issue 9); a socket gets a session of its own. Accepting both lets one bench measure either.
    """

    def __init__(self, session: aiohttp.ClientSession, gw: Gateway, name: str) -> None:
        self.session = session
        self.log = gw.state_dir / "logs" / f"{name}.log"
        self.ready = re.compile(
            rf"function {re.escape(name)} ready at (http://127\.0\.0\.1:\d+|unix:\S+)"
        )
        self.unix: dict[str, aiohttp.ClientSession] = {}

    def addresses(self) -> list[str]:
        return list(dict.fromkeys(self.ready.findall(self.log.read_text(errors="replace"))))

    def endpoint(self, address: str) -> Endpoint:
        if not address.startswith("unix:"):
            return self.session, address
        return self.unix_endpoint(address.removeprefix("unix:"))

    def unix_endpoint(self, path: str) -> Endpoint:
        if path not in self.unix:
            self.unix[path] = client_session(aiohttp.UnixConnector(path=path, limit=0))
        return self.unix[path], "http://localhost"

    def watchdogs(self) -> list[Endpoint]:
        """The watchdogs in front of these servers, on their Unix sockets: the local provider
        puts a replica's watchdog on ``N.sock`` beside its function server's ``N.fn.sock``."""
        return [
            self.unix_endpoint(a.removeprefix("unix:").removesuffix(".fn.sock") + ".sock")
            for a in self.addresses()
            if a.startswith("unix:") and a.endswith(".fn.sock")
        ]

    async def live(self, probe: str = "/stats") -> list[Endpoint]:
        """The endpoints that answer ``probe`` now (replicas come and go)."""
        live = []
        for session, base in map(self.endpoint, self.addresses()):
            try:
                timeout = aiohttp.ClientTimeout(total=2)
                async with session.get(base + probe, timeout=timeout) as r:
                    if r.status < 500:
                        live.append((session, base))
            except (aiohttp.ClientError, TimeoutError, OSError):
                continue
        return live

    async def close(self) -> None:
        for session in self.unix.values():
            await session.close()


# ---- measuring --------------------------------------------------------------------------------


async def poll(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


async def first_byte(session: aiohttp.ClientSession, url: str, timeout: float = 90) -> float:
    """GET ``url`` (a 200 with a body, read to its end); the monotonic time its first body
    byte arrived."""
    async with asyncio.timeout(timeout), session.get(url) as resp:
        first = await resp.content.readany()
        at = time.monotonic()
        if resp.status != 200 or not first:
            raise RuntimeError(f"GET {url}: {resp.status} {first[:200]!r}")
        await resp.read()
    return at


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def step(text: str) -> None:
    print(f"  … {text}", file=sys.stderr, flush=True)


def table(rows: Sequence[tuple[str, ...]]) -> None:
    """Left-aligned columns; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))


class Targets:
    """Each figure with its target and whether it met it: the JSON's ``targets`` and a table."""

    def __init__(self, rows: list[dict[str, Any]] | None = None) -> None:
        self.rows: list[dict[str, Any]] = rows if rows is not None else []

    def add(self, figure: str, value: float, unit: str, target: str, met: bool) -> None:
        self.rows.append(
            {"figure": figure, "value": value, "unit": unit, "target": target, "met": bool(met)}
        )

    def print(self) -> None:
        rows = [("figure", "value", "target", "result")]
        for row in self.rows:
            v = row["value"]
            value = f"{v:,}" if isinstance(v, int) else f"{v:.3g} {row['unit']}"
            rows.append((row["figure"], value, row["target"], "met" if row["met"] else "MISSED"))
        print()
        table(rows)


def summary(values: list[float], scale: float = 1.0) -> dict[str, float]:
    """n, min, p50 (the median), p90 (nearest rank below) and max of ``values`` × ``scale``."""
    ordered = sorted(v * scale for v in values)
    return {
        "n": len(ordered),
        "min": round(ordered[0], 3),
        "p50": round(statistics.median(ordered), 3),
        "p90": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))], 3),
        "max": round(ordered[-1], 3),
    }
