"""The streaming chat, direct to the model vs through the whole platform (loopback only).

    .venv/bin/python bench/bench_chat.py [--quick] [--investigate | --no-investigate]
                                         [--model-threads N] [--out FILE]

In one run it starts ``streamfaas llm --port 0 --parallel 4`` and a gateway (``--port 0
--port-file --no-sandbox``), deploys ``examples/chat`` pointed at the model server (twice:
``chat`` with MAX_TOKENS=128, ``chat-long`` with 1000 for the disconnect runs), and measures
each figure both ways, direct and stack samples interleaved (the order rotating every round) so
that drift on a shared machine hits both alike:

  direct: client → model server /v1/chat/completions (stream)
  stack:  client → gateway /function/chat → watchdog → chat function (waitress, Flask, openai
          SDK) → model server

- TTFT (time to the first content token), and the stack's added TTFT as the p50 of the paired
  differences (target ≤ 5 ms);
- total tokens/s at 1, 2 and 4 concurrent chats;
- disconnect → generation stopped: read a few tokens, drop the connection, poll the model
  server's ``/v1/stats`` until the generation is gone (target ≤ 50 ms).

When a target is missed (or with ``--investigate``) it times each hop on its own (chat_hops.py).
The machine is shared: each round waits (bounded) while other processes are busy, a round that
fails or ran while other processes held > 15% of the CPUs is run again (at most twice), and the
output says how much other work ran in each phase. Prints a table and writes
``bench/results/chat.json``. Every process it starts runs in its own process group and is
stopped on the way out (also on Ctrl-C and SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _path in (BENCH, REPO / "tests" / "llm"):
    sys.path.insert(0, str(_path))

from llm_server import LLMServer  # noqa: E402 - `streamfaas llm` in its own process group

from benchlib import (  # noqa: E402
    Api,
    Gateway,
    Run,
    Targets,
    build_image,
    code_under_test,
    summary,
    table,
)
from chatlib import (  # noqa: E402
    CHAT_PATH,
    CLIENT_TIMEOUT,
    READ_BEFORE_CLOSE,
    SYSTEM_PROMPT,
    TTFT_PROMPT,
    Rounds,
    Target,
    function_text_of,
    measure_disconnect,
    measure_throughput,
    measure_ttft,
    openai_text_of,
    paired_added,
)
from cpuwatch import CpuWatch  # noqa: E402

ADDED_TTFT_TARGET_MS = 5.0
STOP_TARGET_MS = 50.0
MAX_TOKENS = 128  # the `chat` function's MAX_TOKENS: TTFT and throughput, direct and stack
LONG_MAX_TOKENS = 1000  # `chat-long`: the disconnect runs need an answer that is still going


async def measure(rounds: Rounds, t: dict[str, Target], args: argparse.Namespace) -> dict[str, Any]:
    async def warm() -> None:  # llama.cpp's graphs, each function's first requests, pools
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
            for i in range(3):
                for target in (t["direct"], t["stack"]):
                    await target.stream(session, f"Hello ({i})")
                for target in (t["direct_long"], t["stack_long"]):
                    await target.stream(session, f"Hello ({i})", stop_after=3)

    await rounds.run("warm-up", warm)
    await asyncio.sleep(0.5)
    rounds.phase("ttft", f"TTFT: {args.runs} interleaved pairs")
    pair = {"direct": t["direct"], "stack": t["stack"]}
    ttft = await measure_ttft(rounds, pair, args.runs)
    added = paired_added(ttft["stack"], ttft["direct"])
    results: dict[str, Any] = {
        "ttft": {
            "prompt": f"system: {SYSTEM_PROMPT!r}; user: {TTFT_PROMPT!r} + ' (request N)'",
            "max_tokens": MAX_TOKENS,
            "direct_ms": summary(ttft["direct"], 1000.0),
            "stack_ms": summary(ttft["stack"], 1000.0),
            "added_ms": summary(added, 1000.0),
            "added_mean_ms": round(statistics.fmean(added) * 1000.0, 3),
        }
    }
    rounds.phase("throughput", f"tokens/s at 1, 2, 4 chats: {args.rounds} interleaved rounds each")
    results["throughput"] = {
        "prompt": "system prompt + chatlib.STORY",
        "max_tokens": MAX_TOKENS,
        "levels": await measure_throughput(rounds, pair, args.rounds),
    }
    for level in results["throughput"]["levels"]:  # the p50 of each round's stack/direct
        bursts = (level[k]["tokens_per_s_bursts"] for k in ("stack", "direct"))
        level["stack_vs_direct"] = round(
            statistics.median(s / d for s, d in zip(*bursts, strict=True)), 3
        )
    rounds.phase("disconnect", f"disconnect → stop: {args.stop_runs} interleaved pairs")
    long = {"direct": t["direct_long"], "stack": t["stack_long"]}
    results["disconnect"] = {
        "read_tokens_before_close": READ_BEFORE_CLOSE,
        "max_tokens": LONG_MAX_TOKENS,
        **await measure_disconnect(rounds, long, args.stop_runs),
    }
    return results


def verdicts(results: dict[str, Any]) -> Targets:
    targets = Targets()
    added = results["ttft"]["added_ms"]["p50"]
    target = f"<= {ADDED_TTFT_TARGET_MS:g} ms"
    targets.add("added TTFT p50 (paired)", added, "ms", target, added <= ADDED_TTFT_TARGET_MS)
    for mode in ("stack", "direct"):
        stop = results["disconnect"][mode]["observed_ms"]["p50"]
        target = f"<= {STOP_TARGET_MS:g} ms"
        targets.add(f"disconnect → stopped p50, {mode}", stop, "ms", target, stop <= STOP_TARGET_MS)
    return targets


def print_table(body: dict[str, Any], results: dict[str, Any]) -> None:
    print(f"\nstreamfaas chat benchmark ({body['mode']}); {body['note']}")
    cpu = body["cpu_by_phase"].items()
    print(
        "CPU use per phase, % of the machine (this benchmark / other processes / steal): "
        + "; ".join(
            f"{k} {c['benchmark_pct']:.0f} / {c['other_processes_pct']:.0f} / {c['steal_pct']:.0f}"
            for k, c in cpu
        )
    )
    kept = [r for r in body["rounds_run_again"] if r.endswith("(kept)")]
    print(
        f"waited for quiet {body['waited_for_quiet_s']} s; rounds run again:"
        f" {len(body['rounds_run_again']) - len(kept)} (see rounds_run_again)"
    )
    if kept:
        print(f"WARNING: {len(kept)} round(s) still disturbed after 2 retries were kept")
    t, dis = results["ttft"], results["disconnect"]
    d, s, a = t["direct_ms"], t["stack_ms"], t["added_ms"]
    rows: list[tuple[str, ...]] = [
        ("figure", "direct", "stack", "stack vs direct"),
        (
            f"TTFT p50 / p90 (ms, n={d['n']} pairs)",
            f"{d['p50']:.1f} / {d['p90']:.1f}",
            f"{s['p50']:.1f} / {s['p90']:.1f}",
            f"added p50 {a['p50']:.1f} (p90 {a['p90']:.1f})",
        ),
    ]
    for level in results["throughput"]["levels"]:
        d, s = level["direct"], level["stack"]
        rows.append(
            (
                f"tokens/s total, {level['concurrency']} concurrent chat(s)",
                f"{d['tokens_per_s']:.1f}",
                f"{s['tokens_per_s']:.1f}",
                f"× {level['stack_vs_direct']:.2f}",
            )
        )
    n = dis["stack"]["observed_ms"]["n"]
    for key, what in (
        ("observed_ms", f"disconnect → stopped, client-side (ms, n={n})"),
        ("server_ms", "  of which model's cancel → stop (last_cancel_to_stop_ms)"),
        ("tokens_after_read", "  tokens generated past the client's last read"),
    ):
        d, s = dis["direct"][key], dis["stack"][key]
        if d and s:
            f = ".0f" if key == "tokens_after_read" else ".1f"
            cells = (f"{d['p50']:{f}} / {d['max']:{f}}", f"{s['p50']:{f}} / {s['max']:{f}}")
            rows.append((f"{what}, p50 / max", *cells, f"{s['p50'] - d['p50']:+.1f}"))
    table(rows)
    Targets(results["targets"]).print()
    if "investigation" in results:
        from chat_hops import print_investigation

        print_investigation(results["investigation"])


async def run_all(
    rounds: Rounds, gw: Gateway, llm: LLMServer, model: str, args: argparse.Namespace
) -> dict[str, Any]:
    common = {"OPENAI_BASE_URL": llm.url + "/v1", "OPENAI_MODEL": model}
    build_image(gw, "chat", REPO / "examples" / "chat")
    async with aiohttp.ClientSession() as session:
        api = Api(session, gw)
        for name, max_tokens in (("chat", MAX_TOKENS), ("chat-long", LONG_MAX_TOKENS)):
            env = {**common, "SYSTEM_PROMPT": SYSTEM_PROMPT, "MAX_TOKENS": str(max_tokens)}
            await api.deploy({"service": name, "image": "chat:latest", "envVars": env})
        for name in ("chat", "chat-long"):
            await api.wait_ready(name)
    chat_url = llm.url + CHAT_PATH
    targets = {
        "direct": Target("direct", chat_url, openai_text_of, True, model, MAX_TOKENS),
        "stack": Target("stack", gw.function_url("chat"), function_text_of, False, model),
        "direct_long": Target("direct", chat_url, openai_text_of, True, model, LONG_MAX_TOKENS),
        "stack_long": Target(
            "stack", gw.function_url("chat-long"), function_text_of, False, model, LONG_MAX_TOKENS
        ),
    }
    results = await measure(rounds, targets, args)
    results["targets"] = verdicts(results).rows
    missed = not all(row["met"] for row in results["targets"])
    if args.investigate or (args.investigate is None and missed):
        from chat_hops import investigate

        print("investigating, hop by hop …", file=sys.stderr, flush=True)
        results["investigation"] = await investigate(
            rounds, gw, llm.url, model, targets, args.hop_runs, args.stop_runs
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument(
        "--investigate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time each hop (default: only when a target is missed)",
    )
    parser.add_argument(
        "--model-threads",
        type=int,
        default=0,
        help="`streamfaas llm --threads` (default 0: its own default, one less than the CPUs)",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "chat.json")
    args = parser.parse_args()
    args.runs = 6 if args.quick else 15
    args.rounds = 2 if args.quick else 4
    args.stop_runs = 4 if args.quick else 10
    args.hop_runs = 6 if args.quick else 12

    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally below stops every process.
    def _stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)

    run = Run()  # the gateway and the functions; the model server's code is recorded apart
    workdir = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    llm_args = ["--parallel", "4"]
    if args.model_threads:
        llm_args += ["--threads", str(args.model_threads)]
    llm = LLMServer(workdir / "llm", *llm_args)
    gw = Gateway(workdir / "state", "--no-sandbox")
    watch = CpuWatch().start()
    watch.quiet_budget = 30.0 if args.quick else 90.0
    rounds = Rounds(watch, "")
    try:
        print(f"starting streamfaas llm --port 0 {' '.join(llm_args)} …", file=sys.stderr)
        llm.start(timeout=60)
        model = llm.get_json("/v1/models")["data"][0]["id"]
        print("starting the gateway (--no-sandbox), deploying examples/chat …", file=sys.stderr)
        gw.start()
        rounds.stats_url = llm.url + "/v1/stats"
        results = asyncio.run(run_all(rounds, gw, llm, model, args))
    except BaseException:
        # What the servers said: the model's, the gateway's and each function's log.
        for log in sorted(workdir.rglob("*.log"))[:10]:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            print(f"--- {log.relative_to(workdir)} ---", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        watch.stop()
        gw.stop()  # the gateway's process group, then every replica below it
        llm.close()
        shutil.rmtree(workdir, ignore_errors=True)
    body = {
        "mode": "quick" if args.quick else "full",
        "note": "client, gateway, watchdog, function server and model (llama.cpp) share the"
        " machine's CPUs, on loopback; functions run with --no-sandbox",
        "setup": {
            "model_server": f"streamfaas llm --port 0 {' '.join(llm_args)} ({model}, no API key)",
            "gateway": "streamfaas gateway --port 0 --port-file … --no-sandbox",
            "functions": f"examples/chat as chat (MAX_TOKENS={MAX_TOKENS}: TTFT, tokens/s) and"
            f" chat-long (MAX_TOKENS={LONG_MAX_TOKENS}: disconnect runs)",
            "direct_request": "the system prompt, user prompt, model and max_tokens the function"
            " sends, plus a seed (the function passes none)",
        },
        # LLMServer puts this checkout's src first on the model server's PYTHONPATH.
        "model_server_code": code_under_test(first_on_path=REPO / "src"),
        "cpu_by_phase": {k: v for k, v in watch.report().items() if k != "setup"},
        "waited_for_quiet_s": round(watch.waited, 1),
        "rounds_run_again": rounds.redone,
        "results": results,
    }
    print_table(body, results)
    run.write(args.out, body)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: every process was stopped
        print(f"\ninterrupted ({exc or 'Ctrl-C'}); stopped everything it started", file=sys.stderr)
        sys.exit(130)
