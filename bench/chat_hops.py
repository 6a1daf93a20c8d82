"""``bench_chat.py --investigate``: where the stack's added TTFT and disconnect time go.

Times each hop on its own, interleaved like the main figures: the model; the chat function's
server (waitress + Flask + handler), reached on its own Unix socket; the watchdog in front of it,
on its socket; and the full stack through the gateway. For the handler's openai SDK it times the
SDK in this process with a new client per request and with one shared client, and what building
a client costs (examples/chat keeps one per process since 22087a1 because of that cost).
"""

from __future__ import annotations

import asyncio
import importlib
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from benchlib import (
    FunctionServers,
    Gateway,
    listening_unix_sockets,
    summary,
    table,
    watchdog_pids,
)
from chatlib import (
    CLIENT_TIMEOUT,
    SYSTEM_PROMPT,
    Rounds,
    Target,
    function_text_of,
    measure_disconnect,
    measure_ttft,
    paired_added,
)

FULL_STACK = "gateway → watchdog → function (full stack)"


async def find_hops(session: aiohttp.ClientSession, gw: Gateway, function: str) -> dict[str, str]:
    """The Unix sockets of ``function``'s server (from its watchdog's "ready at" log line) and of
    its watchdog (the one socket the watchdog listens on, from /proc)."""
    hops = {}
    addresses = FunctionServers(session, gw, function).addresses()
    if addresses and addresses[-1].startswith("unix:"):
        hops["function"] = addresses[-1].removeprefix("unix:")
    for pid in watchdog_pids(gw.pid, function):
        sockets = listening_unix_sockets(pid)
        if len(sockets) == 1:
            hops["watchdog"] = sockets[0]
    return hops


def hop_targets(hops: dict[str, str], model: str, max_tokens: int) -> dict[str, Target]:
    names = {
        "function": "function server (waitress+Flask+handler)",
        "watchdog": "watchdog → function",
    }
    return {
        names[hop]: Target(
            hop, "http://localhost/", function_text_of, False, model, max_tokens, path
        )
        for hop, path in hops.items()
    }


class SdkTarget:
    """The openai SDK in this process, streaming from the model server as the chat function
    does: ``fresh`` builds a client per request, else one is shared. Runs in a thread; TTFT is
    measured around the SDK call only."""

    def __init__(self, base_url: str, model: str, max_tokens: int, fresh: bool) -> None:
        import openai

        self.openai = openai
        self.base_url = base_url
        self.model = model
        self.max_tokens = max_tokens
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
            model=self.model, messages=messages, stream=True, max_tokens=self.max_tokens
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
        return summary(times, 1000.0)

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


async def investigate(
    rounds: Rounds,
    gw: Gateway,
    llm_url: str,
    model: str,
    main: dict[str, Target],
    runs: int,
    stop_runs: int,
) -> dict[str, Any]:
    """``main``: the main figures' targets (direct, stack, direct_long, stack_long)."""
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        found = {name: await find_hops(session, gw, name) for name in ("chat", "chat-long")}
        for name, hops in found.items():
            if len(hops) < 2:
                print(f"  warning: only {sorted(hops)} of {name}'s hops found", flush=True)
        chat_hops = hop_targets(found["chat"], model, main["stack"].max_tokens)
        long_hops = hop_targets(found["chat-long"], model, main["stack_long"].max_tokens)
        sdk = {
            f"openai SDK in-process, {what}": SdkTarget(
                llm_url + "/v1", model, main["stack"].max_tokens, fresh=fresh
            )
            for what, fresh in (("new client per request", True), ("one shared client", False))
        }
        try:
            ttft_targets: dict[str, Any] = {
                "model (direct)": main["direct"],
                **chat_hops,
                FULL_STACK: main["stack"],
                **sdk,
            }
            stop_targets = {
                "model (direct)": main["direct_long"],
                **long_hops,
                FULL_STACK: main["stack_long"],
            }

            async def warm() -> None:
                for target in ttft_targets.values():
                    await target.ttft_sample(session, "Hello", 0)
                for target in stop_targets.values():
                    await target.stream(session, "Hello", stop_after=3)

            rounds.phase(
                "investigation", f"  hop by hop: TTFT {runs} rounds, disconnect {stop_runs}"
            )
            await rounds.run("warm-up", warm)
            samples = await measure_ttft(rounds, ttft_targets, runs)
            base = samples["model (direct)"]
            layers = {
                name: {
                    "ttft_ms": summary(values, 1000.0),
                    "added_vs_direct_ms": None
                    if values is base
                    else summary(paired_added(values, base), 1000.0),
                }
                for name, values in samples.items()
            }
            return {
                "hops_found": found,
                "ttft_by_hop": {"runs": runs, "layers": layers},
                "client_construction_ms": construction_costs_ms(),
                "disconnect_by_hop": {
                    "runs": stop_runs,
                    "layers": await measure_disconnect(rounds, stop_targets, stop_runs),
                },
            }
        finally:
            for target in (*chat_hops.values(), *long_hops.values()):
                await target.close()
            for sdk_target in sdk.values():
                if sdk_target.client is not None:
                    sdk_target.client.close()


def print_investigation(inv: dict[str, Any]) -> None:
    hop = inv["ttft_by_hop"]
    print(
        f"\nwhere the added TTFT goes: TTFT at each hop, {hop['runs']} interleaved rounds; "
        "added = p50 / p90 of paired differences vs the model direct (ms)"
    )
    rows: list[tuple[str, ...]] = [("hop", "TTFT p50", "added p50", "added p90")]
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
    table(rows)
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
    table(rows)
