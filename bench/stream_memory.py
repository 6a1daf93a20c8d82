#!/usr/bin/env python3
"""Where the gateway's memory per open stream goes: ``tracemalloc`` snapshots diffed across N idle
streams.

    python bench/stream_memory.py [--streams 1000] [--top 25]

The gateway is the real one (``create_app``, its middlewares, ``invoke_function``, the proxy) in a
child process under uvloop with ``tracemalloc`` on, with a stand-in provider whose one replica is
an aiohttp server on a Unix socket (as a watchdog is). The replica and the clients run in this
process, so none of their allocations are counted. Each stream sends one SSE event and then stays
open. The child snapshots once all streams are idle, compares with the snapshot before them, and
prints the biggest sources (by file and line) and the total per stream. bench_core's "gateway RSS
per stream" is the end-to-end figure; this one says which objects make it up.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import web

SRC = Path(__file__).resolve().parent.parent / "src"
FN = "idle"


# ---- the gateway (child process) ----------------------------------------------------------------


class OneReplicaProvider:
    """Just what ``invoke_function`` asks of a provider, for one function with one replica."""

    on_wait = None

    def __init__(self, socket_path: str) -> None:
        from streamfaas.config import BodyLimits
        from streamfaas.proxy import client_session
        from streamfaas.upstream import Pool

        self.session = client_session(aiohttp.UnixConnector(path=socket_path, limit=0, keepalive_timeout=30))
        self.pool = Pool(unix_path=socket_path, keepalive=30)
        self.replica = SimpleNamespace(id=0, inflight=0, session=self.session, pool=self.pool, url="http://localhost")
        # heartbeat_interval 0: idle streams here stay idle (a ping would be a write a stream)
        deployment = SimpleNamespace(labels={}, annotations={}, envVars={"heartbeat_interval": "0"})
        self._record = SimpleNamespace(deployment=deployment, body_limits=BodyLimits(), buffer_body=False, invocations=0)

    name = "local"
    default_namespace = "openfaas-fn"

    def namespaces(self) -> list[str]:
        return [self.default_namespace]

    def has(self, name: str, namespace: str = "") -> bool:
        return name == FN

    def record(self, name: str, namespace: str = "") -> Any:
        return self._record

    async def acquire(self, name: str, namespace: str = "") -> Any:
        return self.replica

    def function_token(self, name: str, namespace: str = "") -> str:
        return ""

    def statuses(self, namespace: str = "") -> list[Any]:
        return []  # nothing for the autoscaler or the stream history to look at

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        await self.session.close()
        self.pool.close()


async def gateway(socket_path: str, state_dir: str, top: int) -> None:
    from streamfaas.config import GatewayConfig
    from streamfaas.gateway.app import create_app
    from streamfaas.gateway.connection_limits import GatewayRunner

    config = GatewayConfig(port=0, state_dir=Path(state_dir), auth=False)
    app = create_app(config, provider=OneReplicaProvider(socket_path))  # type: ignore[arg-type]
    runner = GatewayRunner(app, header_timeout=10, keepalive_timeout=75, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"port": port}), flush=True)
    before: tracemalloc.Snapshot | None = None
    while line := (await reader.readline()).decode().strip():
        gc.collect()
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        if line == "before":
            before = snap
            print(json.dumps({"ok": True}), flush=True)
            continue
        n = int(line)
        assert before is not None
        stats = snap.compare_to(before, "lineno")
        chains = snap.compare_to(before, "traceback") if tracemalloc.get_traceback_limit() > 1 else stats
        total = sum(s.size_diff for s in stats)
        rows = [
            {"where": " > ".join(f"{_short(f.filename)}:{f.lineno}" for f in s.traceback), "bytes_per_stream": round(s.size_diff / n), "count_per_stream": round(s.count_diff / n, 2)}
            for s in chains[:top]
        ]
        by_file: dict[str, int] = {}
        for s in stats:
            key = _short(s.traceback[0].filename)
            by_file[key] = by_file.get(key, 0) + s.size_diff
        files = sorted(((k, round(v / n)) for k, v in by_file.items()), key=lambda kv: -kv[1])[:top]
        print(json.dumps({"kib_per_stream": round(total / n / 1024, 2), "top_lines": rows, "top_files": files}), flush=True)
    await runner.cleanup()


def _short(filename: str) -> str:
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# ---- the replica and the clients (this process) -------------------------------------------------


async def replica(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b"data: 0\n\n")
    await asyncio.Event().wait()  # idle until the gateway hangs up
    return resp


async def open_stream(port: int) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /function/{FN} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
    got = b""
    while b"data: 0" not in got:
        chunk = await reader.read(4096)
        if not chunk:
            raise RuntimeError(f"stream closed early: {got!r}")
        got += chunk
    return writer


async def measure(args: argparse.Namespace) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as tmp:
        sock = f"{tmp}/replica.sock"
        app = web.Application()
        app.router.add_get("/", replica)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.UnixSite(runner, sock).start()
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--top", str(args.top), "--frames", str(args.frames), "--gateway", sock, f"{tmp}/state",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(SRC)},
        )
        assert child.stdin is not None and child.stdout is not None
        writers: list[asyncio.StreamWriter] = []
        try:

            async def ask(line: str) -> dict[str, Any]:
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write(line.encode() + b"\n")
                return json.loads(await child.stdout.readline())  # type: ignore[no-any-return]

            port = json.loads(await child.stdout.readline())["port"]
            for _ in range(20):  # warm up: first-use imports and caches are not per-stream cost
                (await open_stream(port)).close()
            await asyncio.sleep(0.5)
            await ask("before")
            for start in range(0, args.streams, 100):
                writers += await asyncio.gather(*(open_stream(port) for _ in range(start, min(start + 100, args.streams))))
            await asyncio.sleep(0.5)
            result = await ask(str(args.streams))
            print(f"{args.streams} idle streams: {result['kib_per_stream']} KiB/stream of Python heap in the gateway")
            print("\nby file (bytes/stream):")
            for where, size in result["top_files"]:
                print(f"  {size:>6}  {where}")
            print("\nby line (bytes/stream, blocks/stream):")
            for row in result["top_lines"]:
                print(f"  {row['bytes_per_stream']:>6}  {row['count_per_stream']:>5}  {row['where']}")
        finally:
            for w in writers:
                w.close()
            child.stdin.close()
            await child.wait()
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--frames", type=int, default=1, help="call stack kept per allocation; >1 lists call chains")
    parser.add_argument("--gateway", nargs=2, metavar=("SOCKET", "STATE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gateway:
        import uvloop  # as the gateway runs

        tracemalloc.start(args.frames)
        uvloop.run(gateway(*args.gateway, args.top))
    else:
        asyncio.run(measure(args))


if __name__ == "__main__":
    main()
