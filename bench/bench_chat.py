"""The streaming chat, direct to the model vs through the whole platform (loopback only).

    .venv/bin/python bench/bench_chat.py [--quick] [--investigate | --no-investigate]
                                         [--model-threads N] [--out FILE]

In one run it starts ``streamfaas llm --port 0 --parallel 4`` and a gateway (``--port 0
--port-file``; functions run with ``--no-sandbox``), deploys ``examples/chat`` pointed at the
model server (twice: ``chat`` with MAX_TOKENS=128, ``chat-long`` with 1000 for the disconnect
runs), and measures each figure both ways, direct and stack samples interleaved (the order
rotating every round) so that drift on a shared machine hits both alike:

  direct: client → model server /v1/chat/completions (stream)
  stack:  client → gateway /function/chat → watchdog → chat function (waitress, Flask, openai
          SDK) → model server

- TTFT (time to the first content token), and the stack's added TTFT as the p50 of the paired
  differences (target ≤ 5 ms);
- total tokens/s at 1, 2 and 4 concurrent chats;
- disconnect → generation stopped: read a few tokens, drop the connection, poll the model
  server's ``/v1/stats`` until the generation is gone (target ≤ 50 ms).

When a target is missed (or with ``--investigate``) it times each hop on its own (model,
function server, watchdog, gateway), variants of the chat handler (one shared OpenAI client;
waitress watching for disconnects) built from a temp copy, and the openai SDK in-process.

The machine is shared (2 cores here, and other sessions' tests may run beside it): a thread
watches CPU use, each round waits (bounded) while other processes are busy, a round that fails
(a stall, an error) or ran while other processes held > 15% of the CPUs is run again (at most
twice), and the output says how much other work ran in each phase. Prints a table and writes ``bench/results/chat.json``. Every process it starts
runs in its own process group and is stopped on the way out (also on Ctrl-C and SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import itertools
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "bench", REPO / "tests", REPO / "tests" / "llm"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from llm_server import LLMServer  # noqa: E402 - `streamfaas llm` in its own process group

from bench_llm import (  # noqa: E402
    STORY,
    StreamTiming,
    _summary,
    _text_of,
    chat_payload,
    wait_generation_stopped,  # noqa: E402
)
from bench_llm import stream_once as llm_stream_once  # noqa: E402
from benchlib import machine  # noqa: E402
from platform_fixture import Platform, descendants  # noqa: E402 - a real gateway subprocess

# From bench_llm come the measuring pieces: its timing record, summary statistics, OpenAI-chunk
# parser, payload and long prompt. Its loops (measure_ttft, measure_throughput,
# measure_disconnect_stop) run one mode at a time and parse only OpenAI chunks (the chat
# function sends `data: {"content": …}`), so the interleaved loops here reuse the pieces.

ADDED_TTFT_TARGET_MS = 5.0
STOP_TARGET_MS = 50.0
SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly."  # set on the function too
TTFT_PROMPT = "Say hello in one short sentence."
MAX_TOKENS = 128  # the `chat` function's MAX_TOKENS: TTFT and throughput, direct and stack
LONG_MAX_TOKENS = 1000  # `chat-long`: the disconnect runs need an answer that is still going
READ_BEFORE_CLOSE = 5  # content tokens read before a disconnect
# A healthy stream here lasts a few seconds; a stall (see CpuWatch) fails its round, which is
# then run again.
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_read=15)
ROUND_RETRIES = 2  # times a failed or disturbed round is run again
DISTURBED_PCT = 15.0  # a round during which other processes held more of the CPUs is run again

TextOf = Callable[[bytes], "str | None"]
_T = TypeVar("_T")


def _function_text_of(line: bytes) -> str | None:
    """The text of one SSE line from the chat function (``data: {"content": "…"}``)."""
    if not line.startswith(b"data: {"):
        return None
    content = json.loads(line[6:]).get("content")
    return content or None


async def stream_once(
    session: aiohttp.ClientSession,
    url: str,
    text_of: TextOf,
    *,
    json_body: dict[str, Any] | None = None,
    text_body: str | None = None,
    stop_after: int | None = None,
) -> StreamTiming:
    """bench_llm.stream_once, with a time-out that says how far the stream got."""
    started = time.perf_counter()
    try:
        timing = await llm_stream_once(
            session, url, json_body=json_body, text_body=text_body, text_of=text_of, stop_after=stop_after
        )
    except TimeoutError:
        raise RuntimeError(f"{url}: timed out after {time.perf_counter() - started:.1f} s") from None
    if not timing.tokens:
        raise RuntimeError(f"{url}: the stream carried no text")
    return timing


@dataclass
class Target:
    """One way to send a chat: a URL, the body it takes, and the parser for what comes back."""

    name: str
    url: str
    text_of: TextOf
    openai_body: bool  # True: an OpenAI request body; False: the prompt as plain text
    model: str = ""
    max_tokens: int = MAX_TOKENS

    async def stream(
        self,
        session: aiohttp.ClientSession,
        prompt: str,
        *,
        seed: int | None = None,
        stop_after: int | None = None,
    ) -> StreamTiming:
        if self.openai_body:
            # Exactly what the chat function sends (system prompt, model, max_tokens), plus a
            # seed, which the function does not pass on.
            body = chat_payload(prompt, self.max_tokens, model=self.model)
            body["messages"].insert(0, {"role": "system", "content": SYSTEM_PROMPT})
            if seed is not None:
                body["seed"] = seed
            return await stream_once(
                session, self.url, self.text_of, json_body=body, stop_after=stop_after
            )
        return await stream_once(
            session, self.url, self.text_of, text_body=prompt, stop_after=stop_after
        )

    async def ttft_sample(self, session: aiohttp.ClientSession, prompt: str, seed: int) -> float:
        return (await self.stream(session, prompt, seed=seed)).ttft


def _ms(values: list[float]) -> dict[str, float]:
    return _summary(values, 1000.0)


def _orders(index: int, names: list[str]) -> list[str]:
    """Rotate the order each round so no mode always goes first (or last)."""
    shift = index % len(names)
    return names[shift:] + names[:shift]


# ---- TTFT --------------------------------------------------------------------------------------


async def measure_ttft(targets: dict[str, Any], runs: int) -> dict[str, list[float]]:
    """TTFT (s) of each target (a Target or an SdkTarget), one request at a time, the order
    rotating every round. Each request gets its own prompt suffix, so llama.cpp's prompt cache
    helps every request alike (the shared system prompt and prefix) and none gets a
    whole-prompt hit from the request before it."""
    out: dict[str, list[float]] = {name: [] for name in targets}
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        for run in range(runs):

            async def one_round(run: int = run) -> dict[str, float]:
                got = {}
                for name in _orders(run, list(targets)):
                    request = next(_REQUEST_IDS)
                    prompt = f"{TTFT_PROMPT} (request {request})"
                    got[name] = await targets[name].ttft_sample(session, prompt, request)
                    await asyncio.sleep(0.05)  # let the last stream's tail (logs, metrics) settle
                return got

            for name, value in (await run_round(f"TTFT round {run}", one_round)).items():
                out[name].append(value)
    return out


_REQUEST_IDS = itertools.count(1)


def paired_added(stack: list[float], direct: list[float]) -> list[float]:
    return [s - d for s, d in zip(stack, direct, strict=True)]


# ---- throughput --------------------------------------------------------------------------------


async def _concurrent(target: Target, concurrency: int) -> tuple[int, float, list[StreamTiming]]:
    # A session per burst: each chat gets its own fresh connection, both ways.
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        started = time.perf_counter()
        timings = await asyncio.gather(
            *(target.stream(session, STORY, seed=index) for index in range(concurrency))
        )
        wall = time.perf_counter() - started
    return sum(t.tokens for t in timings), wall, list(timings)


async def measure_throughput(direct: Target, stack: Target, rounds: int) -> list[dict[str, Any]]:
    """Total tokens/s (all streams' tokens over the burst's wall time) at 1, 2 and 4 concurrent
    chats, direct and stack bursts alternating. Per mode, the p50 over its bursts (one burst
    disturbed by other work on the machine moves it less than a sum would); the ratio is the
    p50 of each round's stack/direct pair."""
    results = []
    targets = {"direct": direct, "stack": stack}
    for concurrency in (1, 2, 4):
        rates: dict[str, list[float]] = {name: [] for name in targets}
        per_chat: dict[str, list[float]] = {name: [] for name in targets}
        ttfts: dict[str, list[float]] = {name: [] for name in targets}
        tokens = dict.fromkeys(targets, 0)
        for rnd in range(rounds):

            async def one_round(
                rnd: int = rnd, concurrency: int = concurrency
            ) -> dict[str, tuple[int, float, list[StreamTiming]]]:
                got = {}
                for name in _orders(rnd, list(targets)):
                    got[name] = await _concurrent(targets[name], concurrency)
                    await asyncio.sleep(0.1)
                return got

            got = await run_round(f"tokens/s round {rnd} at {concurrency} chat(s)", one_round)
            for name, (count, seconds, timings) in got.items():
                tokens[name] += count
                rates[name].append(count / seconds)
                per_chat[name].extend(t.decode_rate for t in timings)
                ttfts[name].extend(t.ttft for t in timings)
        entry: dict[str, Any] = {"concurrency": concurrency}
        for name in targets:
            entry[name] = {
                "bursts": rounds,
                "tokens": tokens[name],
                "tokens_per_s": round(statistics.median(rates[name]), 1),
                "tokens_per_s_bursts": [round(r, 1) for r in rates[name]],
                "per_chat_tokens_per_s": _summary(per_chat[name]),
                "ttft_ms": _ms(ttfts[name]),
            }
        ratios = [st / d for st, d in zip(rates["stack"], rates["direct"], strict=True)]
        entry["stack_vs_direct"] = round(statistics.median(ratios), 3)
        results.append(entry)
    return results


# ---- disconnect --------------------------------------------------------------------------------


async def measure_disconnect(
    targets: dict[str, Target], stats_url: str, runs: int
) -> dict[str, dict[str, Any]]:
    """Per run and target (order rotating): wait for an idle model, read READ_BEFORE_CLOSE tokens
    of a long answer, drop the connection, and poll /v1/stats until the generation is gone (no
    active generation, one more cancelled, no busy llama.cpp slot). ``observed_ms``: the
    client's close → the first poll that shows the stop (polls are ~1-2 ms on loopback, 1 ms
    apart). ``server_ms``: the model server's ``last_cancel_to_stop_ms`` (its handler seeing the
    disconnect → the generating thread returned), so observed − server ≈ how long the
    disconnect took to reach the model."""
    raw: dict[str, dict[str, list[float]]] = {
        name: {"observed": [], "server": [], "after_read": []} for name in targets
    }
    async with (
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as stats_session,
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session,
    ):

        async def stats() -> dict[str, Any]:
            async with stats_session.get(stats_url) as resp:
                return dict(await resp.json())

        async def idle() -> dict[str, Any]:
            deadline = time.perf_counter() + 10.0
            while True:
                now = await stats()
                if now["active_generations"] == 0 and not now.get("slots_busy"):
                    return now
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"the model did not go idle: {now}")
                await asyncio.sleep(0.01)

        async def one(name: str, run: int) -> tuple[float, float | None, int]:
            before = await idle()
            await targets[name].stream(session, STORY, seed=run, stop_after=READ_BEFORE_CLOSE)
            observed, after = await wait_generation_stopped(stats, before, time.perf_counter(), what=name)
            server = after.get("last_cancel_to_stop_ms")
            generated = after["tokens_generated_total"] - before["tokens_generated_total"]
            return (
                observed,
                server / 1000.0 if server is not None else None,
                max(0, generated - READ_BEFORE_CLOSE),
            )

        for run in range(runs):

            async def one_round(run: int = run) -> dict[str, tuple[float, float | None, int]]:
                got = {}
                for name in _orders(run, list(targets)):
                    got[name] = await one(name, run)
                    await asyncio.sleep(0.05)
                return got

            for name, (observed, server, after_read) in (
                await run_round(f"disconnect round {run}", one_round)
            ).items():
                raw[name]["observed"].append(observed)
                if server is not None:
                    raw[name]["server"].append(server)
                raw[name]["after_read"].append(after_read)
    return {
        name: {
            "observed_ms": _ms(r["observed"]),
            "server_ms": _ms(r["server"]) if r["server"] else None,
            "tokens_after_read": _summary(r["after_read"]),
        }
        for name, r in raw.items()
    }


# ---- investigation: where the stack's extra time goes -------------------------------------------


def _listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on (its socket inodes matched against /proc/net/tcp*)."""
    inodes: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return set()
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def find_hops(gateway_pid: int, function: str) -> dict[str, str]:
    """The watchdog's and the function server's URLs for ``function`` (from /proc)."""
    hops: dict[str, str] = {}
    for pid in descendants(gateway_pid):
        env = _environ(pid)
        if env.get("STREAMFAAS_FUNCTION") != function:
            continue
        if "upstream_url" in env and env.get("PORT"):  # the function server (the watchdog's child)
            hops["function"] = f"http://127.0.0.1:{env['PORT']}/"
        elif "STREAMFAAS_REPLICA" in env:
            ports = _listening_ports(pid)
            if len(ports) == 1:
                hops["watchdog"] = f"http://127.0.0.1:{ports.pop()}/"
    return hops


def variant_handler(workdir: Path, name: str, edit: Callable[[str], str | None]) -> Path | None:
    """A copy of examples/chat in a temp folder with ``edit`` applied to its handler (the example
    itself is untouched); None if ``edit`` finds the handler changed shape."""
    source = edit((REPO / "examples" / "chat" / "handler.py").read_text())
    if source is None:
        return None
    folder = workdir / "variants" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handler.py").write_text(source)
    shutil.copy(REPO / "examples" / "chat" / "requirements.txt", folder / "requirements.txt")
    return folder


_CLIENT_LINE = "    client = openai.OpenAI(base_url=BASE_URL, api_key=read_api_key(), max_retries=0, timeout=60)\n"


def with_shared_client(source: str) -> str | None:
    """One OpenAI client per process (built on first use) instead of one per request."""
    if _CLIENT_LINE not in source:
        return None
    return source.replace(_CLIENT_LINE, "    client = _shared_client()\n") + (
        "\n\n_CLIENT = None\n\n\n"
        "def _shared_client():\n"
        "    global _CLIENT\n"
        "    if _CLIENT is None:\n"
        "        _CLIENT = openai.OpenAI(base_url=BASE_URL, api_key=read_api_key(), max_retries=0, timeout=60)\n"
        "    return _CLIENT\n"
    )


def with_waitress_lookahead(source: str) -> str:
    """waitress keeps reading a connection while its request runs (channel_request_lookahead=1),
    so it sees the client's EOF at once instead of on a failed send. The handler module is
    imported before the template calls waitress.serve, so a class default set here applies."""
    return (
        "import waitress.adjustments\n\n"
        "waitress.adjustments.Adjustments.channel_request_lookahead = 1  # bench experiment\n\n"
    ) + source


class SdkTarget:
    """The openai SDK in this process, streaming from the model server as the chat function
    does: ``fresh`` builds a client per request (as examples/chat does), else one is shared.
    Runs in a thread; TTFT is measured around the SDK call only."""

    def __init__(self, base_url: str, model: str, fresh: bool) -> None:
        import openai

        self.openai = openai
        self.base_url = base_url
        self.model = model
        self.fresh = fresh
        self.client: Any = None if fresh else self._client()

    def _client(self) -> Any:
        return self.openai.OpenAI(
            base_url=self.base_url, api_key="no-key-needed", max_retries=0, timeout=60
        )

    def ttft(self, prompt: str) -> float:
        started = time.perf_counter()
        client = self._client() if self.fresh else self.client
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ]
        stream = client.chat.completions.create(
            model=self.model, messages=messages, stream=True, max_tokens=MAX_TOKENS
        )
        first = 0.0
        try:
            for chunk in stream:
                if not first and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - started
        finally:
            stream.close()
            if self.fresh:
                client.close()
        if not first:
            raise RuntimeError("the SDK stream carried no text")
        return first

    async def ttft_sample(self, _session: aiohttp.ClientSession, prompt: str, _seed: int) -> float:
        return await asyncio.to_thread(self.ttft, prompt)


def construction_costs_ms(runs: int = 30) -> dict[str, dict[str, float]]:
    """What building an OpenAI client costs, and which part of it: its HTTP client (httpx, or
    the httpx2 fork that newer SDKs use) builds an SSL context and loads the CA bundle for
    every client, even for an http:// base URL."""
    import importlib
    import ssl

    import openai

    probe = openai.OpenAI(base_url="http://127.0.0.1:1/v1", api_key="k")
    base = next(c for c in type(probe._client).__mro__ if c.__module__.startswith("httpx"))
    probe.close()
    http = importlib.import_module(base.__module__.split(".")[0])

    def timed(make: Callable[[], Any]) -> dict[str, float]:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            made = make()
            times.append(time.perf_counter() - started)
            if hasattr(made, "close"):
                made.close()
        return _ms(times)

    def sdk(**extra: Any) -> Any:
        return openai.OpenAI(
            base_url="http://127.0.0.1:1/v1", api_key="k", max_retries=0, timeout=60, **extra
        )

    name = http.__name__
    shared_http = http.Client()
    try:
        return {
            "openai.OpenAI(base_url=..., max_retries=0, timeout=60)": timed(sdk),
            f"{name}.Client()": timed(http.Client),
            "ssl.create_default_context()": timed(ssl.create_default_context),
            f"{name}.Client(verify=False)": timed(lambda: http.Client(verify=False)),
            f"openai.OpenAI(..., http_client=<one shared {name}.Client>)": timed(
                lambda: sdk(http_client=shared_http)
            ),
        }
    finally:
        shared_http.close()


async def _warm(targets: dict[str, Any]) -> None:
    async def body() -> None:
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
            for target in targets.values():
                for i in range(2):
                    await target.ttft_sample(session, f"Hello ({i})", i)

    await run_round("warm-up", body)


def investigate(
    gateway: Platform,
    llm_url: str,
    model: str,
    common_env: dict[str, str],
    workdir: Path,
    direct: Target,
    stack: Target,
    direct_long: Target,
    stack_long: Target,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Time each hop on its own (model; function server; watchdog → function; gateway →
    watchdog → function), plus variants of the handler, interleaved like the main figures."""
    assert gateway.proc is not None
    out: dict[str, Any] = {}
    found = {name: find_hops(gateway.proc.pid, name) for name in ("chat", "chat-long")}

    # TTFT by hop.
    ttft_targets: dict[str, Any] = {"model (direct)": direct}
    chat = found["chat"]
    if "function" in chat:
        ttft_targets["function server (waitress+Flask+handler)"] = Target(
            "function", chat["function"], _function_text_of, False, model
        )
    if "watchdog" in chat:
        ttft_targets["watchdog → function"] = Target(
            "watchdog", chat["watchdog"], _function_text_of, False, model
        )
    ttft_targets["gateway → watchdog → function (full stack)"] = stack
    shared = variant_handler(workdir, "chat-shared", with_shared_client)
    if shared is not None:
        gateway.deploy("chat-shared", shared, env={**common_env, "MAX_TOKENS": str(MAX_TOKENS)})
        found["chat-shared"] = find_hops(gateway.proc.pid, "chat-shared")
        if "function" in found["chat-shared"]:
            ttft_targets["function server, handler with one shared OpenAI client"] = Target(
                "function-shared", found["chat-shared"]["function"], _function_text_of, False, model
            )
        ttft_targets["full stack, handler with one shared OpenAI client"] = Target(
            "shared", gateway.function_url("chat-shared"), _function_text_of, False, model
        )
    ttft_targets["openai SDK in-process, new client per request"] = SdkTarget(
        llm_url + "/v1", model, fresh=True
    )
    ttft_targets["openai SDK in-process, one shared client"] = SdkTarget(
        llm_url + "/v1", model, fresh=False
    )

    async def ttft_by_hop() -> dict[str, list[float]]:
        await _warm(ttft_targets)
        return await measure_ttft(ttft_targets, args.hop_runs)

    _phase("investigation", f"  TTFT hop by hop: {args.hop_runs} rounds of {len(ttft_targets)}")
    samples = asyncio.run(ttft_by_hop())
    base = samples["model (direct)"]
    out["ttft_by_hop"] = {
        "runs": args.hop_runs,
        "layers": {
            name: {
                "ttft_ms": _ms(values),
                "added_vs_direct_ms": _ms(paired_added(values, base))
                if values is not base
                else None,
            }
            for name, values in samples.items()
        },
    }
    out["client_construction_ms"] = construction_costs_ms()
    layers = out["ttft_by_hop"]["layers"]

    def added(name: str) -> float | None:
        layer = layers.get(name)
        return layer["added_vs_direct_ms"]["p50"] if layer and layer["added_vs_direct_ms"] else None

    full = added("gateway → watchdog → function (full stack)")
    full_shared = added("full stack, handler with one shared OpenAI client")
    function_shared = added("function server, handler with one shared OpenAI client")
    if None not in (full, full_shared, function_shared):
        assert full is not None and full_shared is not None and function_shared is not None
        # Differences of p50s: a rough split, not exact (each p50 has its own noise).
        out["added_ttft_split_ms"] = {
            "OpenAI client per request (full stack − full stack with a shared client)": round(
                full - full_shared, 1
            ),
            "function server with a shared client (waitress, Flask, openai SDK)": function_shared,
            "watchdog + gateway (full stack − function server, shared client)": round(
                full_shared - function_shared, 1
            ),
        }

    # Disconnect → stop by hop.
    long = found["chat-long"]
    stop_targets: dict[str, Target] = {"model (direct)": direct_long}
    if "function" in long:
        stop_targets["function server (waitress+Flask+handler)"] = Target(
            "function", long["function"], _function_text_of, False, model, LONG_MAX_TOKENS
        )
    if "watchdog" in long:
        stop_targets["watchdog → function"] = Target(
            "watchdog", long["watchdog"], _function_text_of, False, model, LONG_MAX_TOKENS
        )
    stop_targets["gateway → watchdog → function (full stack)"] = stack_long
    lookahead = variant_handler(workdir, "chat-long-lookahead", with_waitress_lookahead)
    if lookahead is not None:
        gateway.deploy(
            "chat-long-lookahead", lookahead, env={**common_env, "MAX_TOKENS": str(LONG_MAX_TOKENS)}
        )
        stop_targets["full stack, waitress channel_request_lookahead=1"] = Target(
            "lookahead",
            gateway.function_url("chat-long-lookahead"),
            _function_text_of,
            False,
            model,
            LONG_MAX_TOKENS,
        )

    async def stop_by_hop() -> dict[str, Any]:
        async def warm() -> None:
            async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
                for target in stop_targets.values():
                    await target.stream(session, "Hello", stop_after=3)

        await run_round("warm-up", warm)
        return await measure_disconnect(stop_targets, llm_url + "/v1/stats", args.stop_runs)

    _phase(
        "investigation", f"  disconnect hop by hop: {args.stop_runs} rounds of {len(stop_targets)}"
    )
    out["disconnect_by_hop"] = {"runs": args.stop_runs, "layers": asyncio.run(stop_by_hop())}
    out["hops_found"] = found
    return out


# ---- the machine -------------------------------------------------------------------------------


class CpuWatch:
    """Every ``interval`` s: the machine's busy CPU time (/proc/stat, steal apart) and this
    benchmark's own (this process and all below it: model, gateway, watchdogs, functions). The
    rest is other work sharing the machine, which the figures of that phase then include."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.phase = "setup"
        self.phases: dict[str, dict[str, float]] = {}
        self._tick = os.sysconf("SC_CLK_TCK")
        self._last_pids: dict[int, int] = {}
        self.recent_other_pct = 0.0  # other processes' share of the CPUs in the last interval
        self.ticks: collections.deque[tuple[float, float]] = collections.deque(maxlen=4000)
        self.quiet_budget = 0.0  # seconds wait_quiet may still spend, in all
        self.waited = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-watch", daemon=True)

    def start(self) -> CpuWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _machine(self) -> tuple[float, float]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq) / self._tick, steal / self._tick

    def _ours(self) -> float:
        total = 0
        for pid in {os.getpid()} | descendants(os.getpid()):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            now = int(fields[11]) + int(fields[12])
            total += now - self._last_pids.get(pid, 0)
            self._last_pids[pid] = now
        return total / self._tick

    def _run(self) -> None:
        busy, steal = self._machine()
        self._ours()
        last = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            busy2, steal2 = self._machine()
            ours = self._ours()
            acc = self.phases.setdefault(
                self.phase, {"wall": 0.0, "busy": 0.0, "ours": 0.0, "steal": 0.0}
            )
            acc["wall"] += now - last
            acc["busy"] += busy2 - busy
            acc["ours"] += ours
            acc["steal"] += steal2 - steal
            capacity = (now - last) * len(os.sched_getaffinity(0))
            self.recent_other_pct = 100 * max(busy2 - busy - ours, 0.0) / max(capacity, 1e-9)
            self.ticks.append((now, self.recent_other_pct))
            busy, steal, last = busy2, steal2, now

    async def wait_quiet(
        self, threshold_pct: float = DISTURBED_PCT, longest: float = 5.0, *, budget: bool = True
    ) -> None:
        """Before a round: while other processes hold more than ``threshold_pct`` of the CPUs,
        wait (at most ``longest`` s here, and with ``budget`` at most ``quiet_budget`` s over
        the whole run)."""
        started = time.monotonic()
        deadline = started + (min(longest, self.quiet_budget) if budget else longest)
        while time.monotonic() < deadline:
            if self.recent_other_pct <= threshold_pct:
                break
            await asyncio.sleep(self.interval)
        spent = time.monotonic() - started
        if budget:
            self.quiet_budget = max(0.0, self.quiet_budget - spent)
        self.waited += spent

    def other_pct_since(self, started: float) -> float:
        """Other processes' mean share of the CPUs (%) over the intervals since ``started``
        (``time.monotonic()``), or in the last interval if none ended since."""
        shares = [pct for at, pct in list(self.ticks) if at >= started]
        return statistics.fmean(shares) if shares else self.recent_other_pct

    def report(self) -> dict[str, dict[str, float]]:
        """Per phase, as % of the machine's capacity (nproc × wall time)."""
        cpus = len(os.sched_getaffinity(0))
        out = {}
        for phase, acc in self.phases.items():
            capacity = max(acc["wall"] * cpus, 1e-9)
            out[phase] = {
                "seconds": round(acc["wall"], 1),
                "busy_pct": round(100 * acc["busy"] / capacity, 1),
                "benchmark_pct": round(100 * min(acc["ours"], acc["busy"]) / capacity, 1),
                "other_processes_pct": round(
                    100 * max(acc["busy"] - acc["ours"], 0.0) / capacity, 1
                ),
                "steal_pct": round(100 * acc["steal"] / capacity, 1),
            }
        return out


# ---- the run -----------------------------------------------------------------------------------


def _verdict(value: float, target: float, what: str) -> dict[str, Any]:
    return {
        "value": value,
        "target": target,
        "what": what,
        "status": "met" if value <= target else "missed",
    }


def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    dis = results["disconnect"]
    return {
        "added_ttft_ms": _verdict(
            results["ttft"]["added_ms"]["p50"],
            ADDED_TTFT_TARGET_MS,
            "p50 of paired (stack − direct) TTFT",
        ),
        "stack_disconnect_to_stop_ms": _verdict(
            dis["stack"]["observed_ms"]["p50"],
            STOP_TARGET_MS,
            "p50, client close → /v1/stats shows the generation gone",
        ),
        "direct_disconnect_to_stop_ms": _verdict(
            dis["direct"]["observed_ms"]["p50"],
            STOP_TARGET_MS,
            "p50, client close → /v1/stats shows the generation gone",
        ),
    }


_WATCH: CpuWatch | None = None


_STATS_URL = ""  # the model server's /v1/stats, once it runs
REDONE: list[str] = []  # rounds run again, and why


async def _quiet() -> None:
    if _WATCH is not None:
        await _WATCH.wait_quiet()


async def _recover() -> None:
    """After a disturbed round: wait (bounded) for other processes to calm down and for the
    model to finish or drop what the failed round left running."""
    if _WATCH is not None:
        await _WATCH.wait_quiet(longest=30.0, budget=False)
    if not _STATS_URL:
        return
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            async with session.get(_STATS_URL) as resp:
                stats = await resp.json()
            if stats["active_generations"] == 0 and not stats.get("slots_busy"):
                return
            await asyncio.sleep(0.2)


async def run_round(what: str, body: Callable[[], Awaitable[_T]]) -> _T:
    """One interleaved round, run again (up to ROUND_RETRIES times) if it fails: a stall or an
    error costs its whole round, so the samples that are kept stay paired."""
    for attempt in range(ROUND_RETRIES + 1):
        await _quiet()
        started = time.monotonic()
        try:
            result = await body()
        except (RuntimeError, TimeoutError, aiohttp.ClientError) as exc:
            if attempt == ROUND_RETRIES:
                raise
            REDONE.append(f"{what}: {exc}")
            print(f"  {what} failed ({exc}); once calm, again", file=sys.stderr, flush=True)
            await _recover()
            continue
        other = _WATCH.other_pct_since(started) if _WATCH is not None else 0.0
        if other <= DISTURBED_PCT:
            return result
        if attempt == ROUND_RETRIES:
            REDONE.append(f"{what}: other processes used {other:.0f}% of the CPUs (kept)")
            return result
        REDONE.append(f"{what}: other processes used {other:.0f}% of the CPUs")
        print(f"  {what} disturbed ({other:.0f}% CPU elsewhere); once calm, again", file=sys.stderr)
        await _recover()
    raise AssertionError("unreachable")


def _phase(name: str, message: str) -> None:
    """Progress on stderr; CPU use is accounted to ``name`` from now on."""
    print(f"{message} …", file=sys.stderr, flush=True)
    if _WATCH is not None:
        _WATCH.phase = name


async def measure(
    direct: Target,
    stack: Target,
    direct_long: Target,
    stack_long: Target,
    stats_url: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    async def warm() -> None:  # llama.cpp's graphs, each function's first requests, pools
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
            for i in range(3):
                for target in (direct, stack):
                    await target.stream(session, f"Hello ({i})")
                for target in (direct_long, stack_long):
                    await target.stream(session, f"Hello ({i})", stop_after=3)

    await run_round("warm-up", warm)
    await asyncio.sleep(0.5)
    results: dict[str, Any] = {}
    _phase("ttft", f"TTFT: {args.runs} interleaved pairs")
    ttft = await measure_ttft({"direct": direct, "stack": stack}, args.runs)
    added = paired_added(ttft["stack"], ttft["direct"])
    results["ttft"] = {
        "prompt": f"system: {SYSTEM_PROMPT!r}; user: {TTFT_PROMPT!r} + ' (request N)'",
        "max_tokens": MAX_TOKENS,
        "direct_ms": _ms(ttft["direct"]),
        "stack_ms": _ms(ttft["stack"]),
        "added_ms": _ms(added),
        "added_mean_ms": round(statistics.fmean(added) * 1000.0, 3),
    }
    _phase("throughput", f"tokens/s at 1, 2, 4 chats: {args.rounds} interleaved round(s) each")
    results["throughput"] = {
        "prompt": "system prompt + bench_llm.STORY",
        "max_tokens": MAX_TOKENS,
        "levels": await measure_throughput(direct, stack, args.rounds),
    }
    _phase("disconnect", f"disconnect → stop: {args.stop_runs} interleaved pairs")
    results["disconnect"] = {
        "read_tokens_before_close": READ_BEFORE_CLOSE,
        "max_tokens": LONG_MAX_TOKENS,
        **await measure_disconnect(
            {"direct": direct_long, "stack": stack_long}, stats_url, args.stop_runs
        ),
    }
    return results


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))


def print_table(meta: dict[str, Any], results: dict[str, Any]) -> None:
    m = meta["machine"]
    print(
        f"\nstreamfaas chat benchmark ({meta['mode']}) — {meta['date']} — nproc {m['cores']}, "
        f"{m['cpu']}, {m['system']}, Python {m['python']}"
    )
    print(f"note: {meta['note']}")
    cpu = meta.get("cpu_by_phase", {})
    if cpu:
        print(
            "CPU use per phase, % of the machine (this benchmark's processes / other processes / "
            "steal): "
            + "; ".join(
                f"{name} {c['benchmark_pct']:.0f} / {c['other_processes_pct']:.0f} / {c['steal_pct']:.0f}"
                for name, c in cpu.items()
            )
        )
        print(f"waited for other processes to quiet down: {meta.get('waited_for_quiet_s', 0)} s")
        redone = meta.get("rounds_run_again", [])
        kept = [r for r in redone if r.endswith("(kept)")]
        if redone:
            print(
                f"rounds run again (failed, or other processes held > {DISTURBED_PCT:g}% of the "
                f"CPUs meanwhile): {len(redone) - len(kept)}; see meta.rounds_run_again"
            )
        if kept:
            print(
                f"WARNING: {len(kept)} round(s) still disturbed after {ROUND_RETRIES} retries were "
                "kept; those figures include other processes' load: rerun on a quieter machine"
            )
    print()
    v = results["verdicts"]
    rows: list[tuple[str, ...]] = [("figure", "direct", "stack", "stack vs direct", "target")]
    t = results["ttft"]
    rows.append(
        (
            f"TTFT p50 / p90 (ms, n={t['direct_ms']['n']} pairs)",
            f"{t['direct_ms']['p50']:.1f} / {t['direct_ms']['p90']:.1f}",
            f"{t['stack_ms']['p50']:.1f} / {t['stack_ms']['p90']:.1f}",
            f"added p50 {t['added_ms']['p50']:.1f} (p90 {t['added_ms']['p90']:.1f})",
            f"added ≤ {ADDED_TTFT_TARGET_MS:g} ms: {v['added_ttft_ms']['status'].upper()}",
        )
    )
    for level in results["throughput"]["levels"]:
        d, s = level["direct"], level["stack"]
        rows.append(
            (
                f"tokens/s total, {level['concurrency']} concurrent chat(s)",
                f"{d['tokens_per_s']:.1f}",
                f"{s['tokens_per_s']:.1f}",
                f"× {level['stack_vs_direct']:.2f}",
                "(none)",
            )
        )
    dis = results["disconnect"]
    d, s = dis["direct"]["observed_ms"], dis["stack"]["observed_ms"]
    rows.append(
        (
            f"disconnect → stopped, client-side p50 / max (ms, n={d['n']})",
            f"{d['p50']:.1f} / {d['max']:.1f}",
            f"{s['p50']:.1f} / {s['max']:.1f}",
            f"{s['p50'] - d['p50']:+.1f} ms",
            f"≤ {STOP_TARGET_MS:g} ms: stack {v['stack_disconnect_to_stop_ms']['status'].upper()}, "
            f"direct {v['direct_disconnect_to_stop_ms']['status'].upper()}",
        )
    )
    d, s = dis["direct"]["server_ms"], dis["stack"]["server_ms"]
    if d and s:
        rows.append(
            (
                "  of which model's cancel → stop (last_cancel_to_stop_ms)",
                f"{d['p50']:.1f} / {d['max']:.1f}",
                f"{s['p50']:.1f} / {s['max']:.1f}",
                f"{s['p50'] - d['p50']:+.1f} ms",
                "",
            )
        )
    d, s = dis["direct"]["tokens_after_read"], dis["stack"]["tokens_after_read"]
    rows.append(
        (
            "  tokens generated past the client's last read, p50 / max",
            f"{d['p50']:g} / {d['max']:g}",
            f"{s['p50']:g} / {s['max']:g}",
            "",
            "",
        )
    )
    _table(rows)

    inv = results.get("investigation")
    if not inv:
        return
    hop = inv["ttft_by_hop"]
    print(
        f"\nwhere the added TTFT goes: TTFT at each hop, {hop['runs']} interleaved rounds; "
        "added = p50 / p90 of paired differences vs the model direct (ms)"
    )
    rows = [("hop", "TTFT p50", "added p50", "added p90")]
    for name, layer in hop["layers"].items():
        added = layer["added_vs_direct_ms"]
        rows.append(
            (
                name,
                f"{layer['ttft_ms']['p50']:.1f}",
                f"{added['p50']:.1f}" if added else "—",
                f"{added['p90']:.1f}" if added else "—",
            )
        )
    _table(rows)
    split = inv.get("added_ttft_split_ms")
    if split:
        print("\nthe full stack's added TTFT, split (differences of p50s, ms):")
        for name, value in split.items():
            print(f"  {name:<76} {value:5.1f}")
    print("\nbuilding a client (ms, p50 of 30):")
    for name, cost in inv["client_construction_ms"].items():
        print(f"  {name:<60} {cost['p50']:.2f}")
    stop = inv["disconnect_by_hop"]
    print(f"\ndisconnect → stopped by hop ({stop['runs']} interleaved rounds, ms)")
    rows = [("hop", "client-side p50", "max", "model cancel→stop p50", "tokens past read p50")]
    for name, layer in stop["layers"].items():
        server = layer["server_ms"]
        rows.append(
            (
                name,
                f"{layer['observed_ms']['p50']:.1f}",
                f"{layer['observed_ms']['max']:.1f}",
                f"{server['p50']:.1f}" if server else "—",
                f"{layer['tokens_after_read']['p50']:g}",
            )
        )
    _table(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (about a minute)")
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
        help="`streamfaas llm --threads` (default 0: llama.cpp's own choice, one per core)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "chat.json")
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

    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "mode": "quick" if args.quick else "full",
    }
    meta["note"] = (
        f"{meta['machine']['cores']} CPU(s) shared by the client, gateway, watchdog, function server "
        "and the model (llama.cpp), all on loopback, so every figure includes CPU contention; "
        "functions run with --no-sandbox (no bubblewrap)"
    )
    global _WATCH, _STATS_URL
    workdir = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    llm: LLMServer | None = None
    gateway: Platform | None = None
    watch = _WATCH = CpuWatch()
    watch.quiet_budget = 30.0 if args.quick else 90.0
    watch.start()
    try:
        llm_args = ["--parallel", "4"]
        if args.model_threads:
            llm_args += ["--threads", str(args.model_threads)]
        print(
            f"starting streamfaas llm --port 0 {' '.join(llm_args)} …", file=sys.stderr, flush=True
        )
        llm = LLMServer(workdir / "llm", *llm_args).start(timeout=60)
        _STATS_URL = llm.url + "/v1/stats"
        model = llm.get_json("/v1/models")["data"][0]["id"]
        print(
            "starting the gateway (--no-sandbox), deploying examples/chat …",
            file=sys.stderr,
            flush=True,
        )
        gateway = Platform(workdir / "state").start()
        common = {
            "OPENAI_BASE_URL": llm.url + "/v1",
            "OPENAI_MODEL": model,
            "SYSTEM_PROMPT": SYSTEM_PROMPT,
        }
        gateway.deploy(
            "chat", REPO / "examples" / "chat", env={**common, "MAX_TOKENS": str(MAX_TOKENS)}
        )
        gateway.deploy(
            "chat-long",
            REPO / "examples" / "chat",
            env={**common, "MAX_TOKENS": str(LONG_MAX_TOKENS)},
        )
        meta["setup"] = {
            "model_server": f"streamfaas llm --port 0 {' '.join(llm_args)} ({model}, no API key)",
            "gateway": "streamfaas gateway --port 0 --port-file … --no-sandbox",
            "functions": {
                "chat": f"examples/chat (python3-flask), MAX_TOKENS={MAX_TOKENS}: TTFT and tokens/s",
                "chat-long": f"examples/chat (python3-flask), MAX_TOKENS={LONG_MAX_TOKENS}: disconnect runs",
            },
            "direct_request": "the system prompt, user prompt, model and max_tokens the function sends, "
            "plus a seed (the function passes none)",
            "interleaving": "direct and stack samples alternate, the order rotating every round",
        }
        chat_url = llm.url + "/v1/chat/completions"
        direct = Target("direct", chat_url, _text_of, True, model, MAX_TOKENS)
        stack = Target(
            "stack", gateway.function_url("chat"), _function_text_of, False, model, MAX_TOKENS
        )
        direct_long = Target("direct", chat_url, _text_of, True, model, LONG_MAX_TOKENS)
        stack_long = Target(
            "stack",
            gateway.function_url("chat-long"),
            _function_text_of,
            False,
            model,
            LONG_MAX_TOKENS,
        )
        results = asyncio.run(
            measure(direct, stack, direct_long, stack_long, llm.url + "/v1/stats", args)
        )
        results["verdicts"] = verdicts(results)

        missed = any(v["status"] != "met" for v in results["verdicts"].values())
        if args.investigate or (args.investigate is None and missed):
            print("investigating, hop by hop …", file=sys.stderr, flush=True)
            results["investigation"] = investigate(
                gateway,
                llm.url,
                model,
                common,
                workdir,
                direct,
                stack,
                direct_long,
                stack_long,
                args,
            )
    except BaseException:
        # What the servers said: the model's, the gateway's and each function's log.
        for log in sorted(workdir.rglob("*.log"))[:10]:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            print(f"--- {log.relative_to(workdir)} ---", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        watch.stop()
        if gateway is not None:
            gateway.close()  # the gateway's process group, then every replica below it
        if llm is not None:
            llm.close()
        shutil.rmtree(workdir, ignore_errors=True)
    meta["cpu_by_phase"] = {k: v for k, v in watch.report().items() if k != "setup"}
    meta["waited_for_quiet_s"] = round(watch.waited, 1)
    meta["rounds_run_again"] = REDONE

    print_table(meta, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: every process was stopped
        print(f"\ninterrupted ({exc or 'Ctrl-C'}); stopped everything it started", file=sys.stderr)
        sys.exit(130)
