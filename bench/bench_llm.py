"""Benchmark of `streamfaas llm`, straight to the model server (loopback only, bounded loops).

    python bench/bench_llm.py                       # starts a server, measures, stops it
    python bench/bench_llm.py --base-url URL --stats-url URL/v1/stats   # an already running one

Measures time to first token, tokens/s at 1, 2 and 4 concurrent chats, and how long after a
client disconnects the model stops generating. Prints a table and writes bench/results/llm.json.

Each measurement takes a base URL and a path, so the same functions measure the model through
the full stack (gateway → watchdog → chat function → model) by passing the gateway's URL, while
``stats_url`` keeps pointing at the model server, which is where generation is counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "tests", REPO / "tests" / "llm"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from llm_server import LLMServer  # noqa: E402 - `streamfaas llm` in its own process group, always stopped

CHAT_PATH = "/v1/chat/completions"
STORY = "Write a long, detailed story about a lighthouse keeper and a storm."


@dataclass
class StreamTiming:
    """One streamed request, timed at the client."""

    ttft: float = 0.0  # seconds from sending the request to the first text
    total: float = 0.0  # seconds from sending the request to the end of the stream
    token_times: list[float] = field(default_factory=list)  # arrival of each text chunk

    @property
    def tokens(self) -> int:
        return len(self.token_times)

    @property
    def decode_rate(self) -> float:
        """Tokens/s after the first token (the steady streaming rate)."""
        if self.tokens < 2:
            return 0.0
        return (self.tokens - 1) / (self.token_times[-1] - self.token_times[0])


def chat_payload(content: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": True,
        **extra,
    }


def _text_of(event: bytes) -> str | None:
    """The text in one SSE data line of an OpenAI chat/completions stream (None if none)."""
    if not event.startswith(b"data: {"):
        return None
    chunk = json.loads(event[6:])
    choices = chunk.get("choices") or []
    if not choices:
        return None
    choice = choices[0]
    text = choice.get("delta", {}).get("content") if "delta" in choice else choice.get("text")
    return text or None


async def wait_generation_stopped(
    stats: Callable[[], Awaitable[dict[str, Any]]], before: dict[str, Any], closed: float, what: str = "generation"
) -> tuple[float, dict[str, Any]]:
    """Poll the model's stats until the cancelled request's generation has stopped; returns
    the seconds since ``closed`` (the client's close) and the stats at that moment."""
    deadline = closed + 5.0
    while True:
        after = await stats()
        if (
            after["active_generations"] == 0
            and after["cancelled_total"] > before["cancelled_total"]
            and not after.get("slots_busy")  # llama.cpp's own view: no slot decoding
        ):
            return time.perf_counter() - closed, after
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{what} did not stop within 5 s: {after}")
        await asyncio.sleep(0.001)


async def stream_once(
    session: aiohttp.ClientSession,
    url: str,
    *,
    json_body: dict[str, Any] | None = None,
    text_body: str | None = None,
    text_of: Callable[[bytes], str | None] | None = None,
    stop_after: int | None = None,
) -> StreamTiming:
    """POST a streaming request and time each text chunk; after ``stop_after`` chunks, drop
    the connection. ``text_of`` reads one SSE line (OpenAI chunks by default); an
    ``event: error`` raises."""
    read = text_of or _text_of
    timing = StreamTiming()
    started = time.perf_counter()
    kwargs: dict[str, Any] = {"json": json_body} if json_body is not None else {"data": text_body}
    async with session.post(url, **kwargs) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {(await resp.text())[:300]}")
        error = False
        async for line in resp.content:
            if error and line.startswith(b"data:"):
                raise RuntimeError(f"{url}: error event: {line[5:].strip()[:300]!r}")
            if line.startswith(b"event: error"):
                error = True
                continue
            if read(line) is None:
                continue
            now = time.perf_counter()
            if not timing.token_times:
                timing.ttft = now - started
            timing.token_times.append(now)
            if stop_after is not None and timing.tokens >= stop_after:
                resp.close()  # drop the connection mid-stream
                break
    timing.total = time.perf_counter() - started
    return timing


def _summary(values: list[float], scale: float = 1.0) -> dict[str, float]:
    ordered = sorted(v * scale for v in values)
    return {
        "n": len(ordered),
        "min": round(ordered[0], 3),
        "p50": round(statistics.median(ordered), 3),
        "p90": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))], 3),
        "max": round(ordered[-1], 3),
    }


async def measure_ttft(
    base_url: str,
    path: str,
    payload: dict[str, Any],
    *,
    runs: int = 10,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Time to first token (ms), one request at a time. Each run varies the prompt's last line
    so that llama.cpp's prompt cache does not answer from an identical earlier prompt."""
    ttfts: list[float] = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for run in range(runs):
            body = json.loads(json.dumps(payload))
            if "messages" in body:
                body["messages"][-1]["content"] += f" (request {run})"
            timing = await stream_once(session, base_url + path, json_body=body)
            ttfts.append(timing.ttft)
    return {"ttft_ms": _summary(ttfts, 1000.0)}


async def measure_throughput(
    base_url: str,
    path: str,
    payload: dict[str, Any],
    *,
    concurrency: int,
    rounds: int = 1,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``concurrency`` chats at once, ``rounds`` times: aggregate tokens/s over the wall time,
    and each stream's own steady rate."""
    tokens = 0
    wall = 0.0
    per_stream: list[float] = []
    ttfts: list[float] = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(rounds):
            started = time.perf_counter()
            timings = await asyncio.gather(
                *(
                    stream_once(session, base_url + path, json_body={**payload, "seed": index})
                    for index in range(concurrency)
                )
            )
            wall += time.perf_counter() - started
            tokens += sum(t.tokens for t in timings)
            per_stream.extend(t.decode_rate for t in timings)
            ttfts.extend(t.ttft for t in timings)
    return {
        "concurrency": concurrency,
        "tokens": tokens,
        "aggregate_tokens_per_s": round(tokens / wall, 1),
        "per_stream_tokens_per_s": _summary(per_stream),
        "ttft_ms": _summary(ttfts, 1000.0),
    }


async def measure_disconnect_stop(
    base_url: str,
    path: str,
    payload: dict[str, Any],
    *,
    stats_url: str,
    runs: int = 10,
    read_tokens: int = 5,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Read ``read_tokens`` chunks of a long answer, disconnect, and measure until the model
    server reports the generation stopped (no active generation, no busy llama.cpp slot).
    ``server_ms`` is the server's own measure (from seeing the disconnect to the generating
    thread's return); ``observed_ms`` is the client's, from its close to the first stats poll
    that shows the stop (so it includes up to one poll's round trip); ``tokens_after_read`` are
    tokens the server produced beyond the ones the client read (in flight or after the close)."""
    observed: list[float] = []
    server: list[float] = []
    after_read: list[float] = []
    async with aiohttp.ClientSession(headers=headers) as session:

        async def stats() -> dict[str, Any]:
            async with session.get(stats_url) as resp:
                return dict(await resp.json())

        for _ in range(runs):
            before = await stats()
            await stream_once(session, base_url + path, json_body=payload, stop_after=read_tokens)
            seconds, after = await wait_generation_stopped(stats, before, time.perf_counter())
            observed.append(seconds)
            if after.get("last_cancel_to_stop_ms") is not None:
                server.append(after["last_cancel_to_stop_ms"] / 1000.0)
            generated = after["tokens_generated_total"] - before["tokens_generated_total"]
            after_read.append(max(0, generated - read_tokens))
    return {
        "observed_ms": _summary(observed, 1000.0),
        "server_ms": _summary(server, 1000.0) if server else None,
        "tokens_after_read": _summary(after_read),
    }


async def run_all(base_url: str, stats_url: str, args: argparse.Namespace) -> dict[str, Any]:
    # Warm up: the first request pays for llama.cpp's graph allocation.
    async with aiohttp.ClientSession() as session:
        await stream_once(session, base_url + CHAT_PATH, json_body=chat_payload("Hello", 8))
    results: dict[str, Any] = {}
    results["ttft"] = await measure_ttft(
        base_url, CHAT_PATH, chat_payload("Say hello in one short sentence.", 8), runs=args.runs
    )
    results["throughput"] = [
        await measure_throughput(
            base_url,
            CHAT_PATH,
            chat_payload(STORY, args.max_tokens, temperature=0.8),
            concurrency=concurrency,
            rounds=args.rounds,
        )
        for concurrency in (1, 2, 4)
    ]
    results["disconnect_stop"] = await measure_disconnect_stop(
        base_url, CHAT_PATH, chat_payload(STORY, 1500), stats_url=stats_url, runs=args.runs
    )
    return results


def print_table(results: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []
    ttft = results["ttft"]["ttft_ms"]
    rows.append(("TTFT, 1 chat (ms)", f"p50 {ttft['p50']}  p90 {ttft['p90']}  max {ttft['max']}"))
    for entry in results["throughput"]:
        rows.append(
            (
                f"tokens/s, {entry['concurrency']} concurrent",
                f"total {entry['aggregate_tokens_per_s']}  per chat p50 "
                f"{entry['per_stream_tokens_per_s']['p50']}  TTFT p50 {entry['ttft_ms']['p50']} ms",
            )
        )
    stop = results["disconnect_stop"]
    if stop["server_ms"]:
        rows.append(
            (
                "disconnect→stop, server (ms)",
                f"p50 {stop['server_ms']['p50']}  max {stop['server_ms']['max']}  (target ≤ 50)",
            )
        )
    rows.append(
        (
            "disconnect→stop, observed (ms)",
            f"p50 {stop['observed_ms']['p50']}  max {stop['observed_ms']['max']}",
        )
    )
    after = stop["tokens_after_read"]
    rows.append(("tokens past the client's last read", f"p50 {after['p50']}  max {after['max']}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="measure this running server instead of starting one")
    parser.add_argument("--stats-url", help="the model server's /v1/stats (default: BASE/v1/stats)")
    parser.add_argument("--runs", type=int, default=10, help="TTFT and disconnect runs")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per concurrency level")
    parser.add_argument(
        "--max-tokens", type=int, default=128, help="tokens per chat in the throughput runs"
    )
    parser.add_argument("--parallel", type=int, default=4, help="slots of the server started here")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "llm.json")
    args = parser.parse_args()

    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    if args.base_url:
        base = args.base_url.rstrip("/")
        results = asyncio.run(run_all(base, args.stats_url or base + "/v1/stats", args))
        meta["target"] = base
    else:
        server = LLMServer(Path(tempfile.mkdtemp(prefix="bench-llm-")), "--parallel", str(args.parallel)).start()
        with contextlib.closing(server):
            results = asyncio.run(run_all(server.url, server.url + "/v1/stats", args))
        meta["target"] = (
            f"streamfaas llm (bundled SmolLM2-135M-Instruct, --parallel {args.parallel})"
        )
    print(f"streamfaas llm benchmark — {meta['target']} — {meta['machine']}")
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "direct": results}, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
