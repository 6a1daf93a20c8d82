"""Benchmark of `streamfaas llm`, straight to the model server (loopback only, bounded loops).

    python bench/bench_llm.py                       # starts a server, measures, stops it
    python bench/bench_llm.py --base-url URL [--stats-url URL/v1/stats]   # an already running one

Measures time to first token, tokens/s at 1, 2 and 4 concurrent chats, and how long after a
client disconnects the model stops generating. Prints a table and writes bench/results/llm.json.
The loops are bench_chat.py's (chatlib.py) with a single target: the same requests (system
prompt, model, max_tokens, a seed), the same retries of a round that failed or ran beside other
work on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _path in (BENCH, REPO / "tests" / "llm"):
    sys.path.insert(0, str(_path))

from llm_server import LLMServer  # noqa: E402 - `streamfaas llm` in its own process group

from benchlib import Run, summary  # noqa: E402
from chatlib import (  # noqa: E402
    CHAT_PATH,
    Rounds,
    Target,
    measure_disconnect,
    measure_throughput,
    measure_ttft,
    openai_text_of,
)
from cpuwatch import CpuWatch  # noqa: E402

TTFT_MAX_TOKENS = 8  # the TTFT runs need only the first token
STOP_MAX_TOKENS = 1500  # the disconnect runs need an answer that is still going


async def run_all(
    rounds: Rounds, base_url: str, model: str, args: argparse.Namespace
) -> dict[str, Any]:
    def target(max_tokens: int) -> Target:
        return Target("direct", base_url + CHAT_PATH, openai_text_of, True, model, max_tokens)

    # Warm up: the first request pays for llama.cpp's graph allocation.
    await measure_ttft(rounds, {"direct": target(TTFT_MAX_TOKENS)}, 2)
    rounds.phase("ttft", f"TTFT: {args.runs} runs")
    ttft = await measure_ttft(rounds, {"direct": target(TTFT_MAX_TOKENS)}, args.runs)
    rounds.phase("throughput", f"tokens/s at 1, 2, 4 chats: {args.rounds} rounds each")
    levels = await measure_throughput(rounds, {"direct": target(args.max_tokens)}, args.rounds)
    rounds.phase("disconnect", f"disconnect → stop: {args.runs} runs")
    stop = await measure_disconnect(rounds, {"direct": target(STOP_MAX_TOKENS)}, args.runs)
    return {
        "ttft": {"max_tokens": TTFT_MAX_TOKENS, "ttft_ms": summary(ttft["direct"], 1000.0)},
        "throughput": {
            "max_tokens": args.max_tokens,
            "levels": [{"concurrency": lv["concurrency"], **lv["direct"]} for lv in levels],
        },
        "disconnect_stop": {"max_tokens": STOP_MAX_TOKENS, **stop["direct"]},
    }


def print_table(results: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []
    ttft = results["ttft"]["ttft_ms"]
    rows.append(("TTFT, 1 chat (ms)", f"p50 {ttft['p50']}  p90 {ttft['p90']}  max {ttft['max']}"))
    for entry in results["throughput"]["levels"]:
        rows.append(
            (
                f"tokens/s, {entry['concurrency']} concurrent",
                f"total {entry['tokens_per_s']}  per chat p50"
                f" {entry['per_chat_tokens_per_s']['p50']}  TTFT p50 {entry['ttft_ms']['p50']} ms",
            )
        )
    stop = results["disconnect_stop"]
    if stop["server_ms"]:
        server = stop["server_ms"]
        rows.append(
            (
                "disconnect→stop, server (ms)",
                f"p50 {server['p50']}  max {server['max']}  (target ≤ 50)",
            )
        )
    observed = stop["observed_ms"]
    rows.append(("disconnect→stop, observed (ms)", f"p50 {observed['p50']}  max {observed['max']}"))
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
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "llm.json")
    args = parser.parse_args()

    # A server started here runs this checkout's src (LLMServer puts it first on PYTHONPATH).
    run = Run(first_on_path=None if args.base_url else REPO / "src")
    watch = CpuWatch().start()
    watch.quiet_budget = 60.0
    server: LLMServer | None = None
    try:
        if args.base_url:
            base = args.base_url.rstrip("/")
            target = f"{base} (already running: its code is not the `code` recorded here)"
        else:
            server = LLMServer(
                Path(tempfile.mkdtemp(prefix="bench-llm-")), "--parallel", str(args.parallel)
            )
            base = server.start().url
            target = f"streamfaas llm (bundled model, --parallel {args.parallel}), started here"
        with urllib.request.urlopen(base + "/v1/models", timeout=10) as resp:
            model = json.loads(resp.read())["data"][0]["id"]
        rounds = Rounds(watch, args.stats_url or base + "/v1/stats")
        results = asyncio.run(run_all(rounds, base, model, args))
    finally:
        watch.stop()
        if server is not None:
            server.close()
    print(f"streamfaas llm benchmark — {target}, model {model}")
    print_table(results)
    body = {
        "target": target,
        "model": model,
        "settings": {"runs": args.runs, "rounds": args.rounds, "max_tokens": args.max_tokens},
        "cpu_by_phase": {k: v for k, v in watch.report().items() if k != "setup"},
        "rounds_run_again": rounds.redone,
        "results": results,
    }
    run.write(args.out, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
