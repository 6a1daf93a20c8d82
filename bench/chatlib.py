"""The chat-streaming harness of bench_llm.py and bench_chat.py: one streamed request timed
chunk by chunk (OpenAI chunks or the chat function's ``data: {"content": …}``), a target to
send chats to, waiting until the model has stopped generating, and interleaved rounds that are
run again when they fail or ran beside other work on the machine."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from benchlib import summary
from cpuwatch import CpuWatch

CHAT_PATH = "/v1/chat/completions"
STORY = "Write a long, detailed story about a lighthouse keeper and a storm."
SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly."  # set on the chat function too
# A healthy stream here lasts a few seconds; a stall fails its round, which is then run again.
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_read=15)

TextOf = Callable[[bytes], "str | None"]
_T = TypeVar("_T")


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


def openai_text_of(line: bytes) -> str | None:
    """The text in one SSE data line of an OpenAI chat/completions stream (None if none)."""
    if not line.startswith(b"data: {"):
        return None
    choices = json.loads(line[6:]).get("choices") or []
    if not choices:
        return None
    choice = choices[0]
    text = choice.get("delta", {}).get("content") if "delta" in choice else choice.get("text")
    return text or None


def function_text_of(line: bytes) -> str | None:
    """The text of one SSE line from the chat function (``data: {"content": "…"}``)."""
    if not line.startswith(b"data: {"):
        return None
    return json.loads(line[6:]).get("content") or None


async def stream_once(
    session: aiohttp.ClientSession,
    url: str,
    *,
    json_body: dict[str, Any] | None = None,
    text_body: str | None = None,
    text_of: TextOf = openai_text_of,
    stop_after: int | None = None,
) -> StreamTiming:
    """POST a streaming request and time each text chunk; after ``stop_after`` chunks, drop
    the connection. An ``event: error``, a time-out or a stream without text raises."""
    timing = StreamTiming()
    started = time.perf_counter()
    kwargs: dict[str, Any] = {"json": json_body} if json_body is not None else {"data": text_body}
    try:
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
                if text_of(line) is None:
                    continue
                now = time.perf_counter()
                if not timing.token_times:
                    timing.ttft = now - started
                timing.token_times.append(now)
                if stop_after is not None and timing.tokens >= stop_after:
                    resp.close()  # drop the connection mid-stream
                    break
    except TimeoutError:
        raise RuntimeError(
            f"{url}: timed out after {time.perf_counter() - started:.1f} s"
        ) from None
    if not timing.tokens:
        raise RuntimeError(f"{url}: the stream carried no text")
    timing.total = time.perf_counter() - started
    return timing


async def wait_generation_stopped(
    stats: Callable[[], Awaitable[dict[str, Any]]],
    before: dict[str, Any],
    closed: float,
    what: str = "generation",
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


@dataclass
class Target:
    """One way to send a chat: a URL (over a Unix socket when ``socket`` is set), the body it
    takes, and the parser for what comes back."""

    name: str
    url: str
    text_of: TextOf
    openai_body: bool  # True: an OpenAI request body; False: the prompt as plain text
    model: str = ""
    max_tokens: int = 128
    socket: str | None = None
    _session: aiohttp.ClientSession | None = None

    async def stream(
        self,
        session: aiohttp.ClientSession,
        prompt: str,
        *,
        seed: int | None = None,
        stop_after: int | None = None,
    ) -> StreamTiming:
        if self.socket is not None:
            if self._session is None:  # created in the running loop, closed by close()
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=self.socket), timeout=CLIENT_TIMEOUT
                )
            session = self._session
        if not self.openai_body:
            return await stream_once(
                session, self.url, text_body=prompt, text_of=self.text_of, stop_after=stop_after
            )
        # Exactly what the chat function sends (system prompt, model, max_tokens), plus a seed,
        # which the function does not pass on.
        body = chat_payload(prompt, self.max_tokens, model=self.model)
        body["messages"].insert(0, {"role": "system", "content": SYSTEM_PROMPT})
        if seed is not None:
            body["seed"] = seed
        return await stream_once(
            session, self.url, json_body=body, text_of=self.text_of, stop_after=stop_after
        )

    async def ttft_sample(self, session: aiohttp.ClientSession, prompt: str, seed: int) -> float:
        return (await self.stream(session, prompt, seed=seed)).ttft

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def orders(index: int, names: list[str]) -> list[str]:
    """Rotate the order each round so no mode always goes first (or last)."""
    shift = index % len(names)
    return names[shift:] + names[:shift]


class Rounds:
    """Interleaved rounds on a shared machine: before each, wait (bounded) while other processes
    are busy; a round that fails (a stall, an error) or ran while other processes held more than
    ``disturbed_pct`` of the CPUs is run again, at most ``retries`` times, so the samples kept
    stay paired. ``redone`` says which rounds were run again, and why."""

    def __init__(
        self, watch: CpuWatch, stats_url: str, retries: int = 2, disturbed_pct: float = 15.0
    ) -> None:
        self.watch = watch
        self.stats_url = stats_url  # the model server's /v1/stats
        self.retries = retries
        self.disturbed_pct = disturbed_pct
        self.redone: list[str] = []

    def phase(self, name: str, message: str) -> None:
        """Progress on stderr; CPU use is accounted to ``name`` from now on."""
        print(f"{message} …", file=sys.stderr, flush=True)
        self.watch.phase = name

    async def run(self, what: str, body: Callable[[], Awaitable[_T]]) -> _T:
        for attempt in range(self.retries + 1):
            await self.watch.wait_quiet(self.disturbed_pct, 5.0, budget=True)
            started = time.monotonic()
            try:
                result = await body()
            except (RuntimeError, TimeoutError, aiohttp.ClientError) as exc:
                if attempt == self.retries:
                    raise
                self.redone.append(f"{what}: {exc}")
                print(f"  {what} failed ({exc}); once calm, again", file=sys.stderr, flush=True)
                await self._recover()
                continue
            other = self.watch.other_pct_since(started)
            if other <= self.disturbed_pct:
                return result
            if attempt == self.retries:
                self.redone.append(f"{what}: other processes used {other:.0f}% of the CPUs (kept)")
                return result
            self.redone.append(f"{what}: other processes used {other:.0f}% of the CPUs")
            print(f"  {what} disturbed ({other:.0f}% CPU elsewhere); again", file=sys.stderr)
            await self._recover()
        raise AssertionError("unreachable")

    async def _recover(self) -> None:
        """After a disturbed round: wait (bounded) for other processes to calm down and for the
        model to finish or drop what the failed round left running."""
        await self.watch.wait_quiet(self.disturbed_pct, 30.0, budget=False)
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
            deadline = time.monotonic() + 60.0
            while time.monotonic() < deadline:
                async with session.get(self.stats_url) as resp:
                    stats = await resp.json()
                if stats["active_generations"] == 0 and not stats.get("slots_busy"):
                    return
                await asyncio.sleep(0.2)


# ---- interleaved measurements ------------------------------------------------------------------

TTFT_PROMPT = "Say hello in one short sentence."
READ_BEFORE_CLOSE = 5  # content tokens read before a disconnect
_REQUEST_IDS = itertools.count(1)


async def measure_ttft(
    rounds: Rounds, targets: dict[str, Any], runs: int
) -> dict[str, list[float]]:
    """TTFT (s) of each target (anything with ``ttft_sample``), one request at a time, the
    order rotating every round. Each request gets its own prompt suffix, so llama.cpp's prompt
    cache helps every request alike (the shared system prompt and prefix) and none gets a
    whole-prompt hit from the request before it."""
    out: dict[str, list[float]] = {name: [] for name in targets}
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        for run in range(runs):

            async def one_round(run: int = run) -> dict[str, float]:
                got = {}
                for name in orders(run, list(targets)):
                    request = next(_REQUEST_IDS)
                    prompt = f"{TTFT_PROMPT} (request {request})"
                    got[name] = await targets[name].ttft_sample(session, prompt, request)
                    await asyncio.sleep(0.05)  # let the last stream's tail (logs, metrics) settle
                return got

            for name, value in (await rounds.run(f"TTFT round {run}", one_round)).items():
                out[name].append(value)
    return out


def paired_added(values: list[float], base: list[float]) -> list[float]:
    return [v - b for v, b in zip(values, base, strict=True)]


async def measure_disconnect(
    rounds: Rounds, targets: dict[str, Target], runs: int
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
            async with stats_session.get(rounds.stats_url) as resp:
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
            observed, after = await wait_generation_stopped(
                stats, before, time.perf_counter(), what=name
            )
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
                for name in orders(run, list(targets)):
                    got[name] = await one(name, run)
                    await asyncio.sleep(0.05)
                return got

            got = await rounds.run(f"disconnect round {run}", one_round)
            for name, (observed, server, after_read) in got.items():
                raw[name]["observed"].append(observed)
                if server is not None:
                    raw[name]["server"].append(server)
                raw[name]["after_read"].append(after_read)
    return {
        name: {
            "observed_ms": summary(r["observed"], 1000.0),
            "server_ms": summary(r["server"], 1000.0) if r["server"] else None,
            "tokens_after_read": summary(r["after_read"]),
        }
        for name, r in raw.items()
    }


async def measure_throughput(
    rounds: Rounds, targets: dict[str, Target], runs: int, levels: tuple[int, ...] = (1, 2, 4)
) -> list[dict[str, Any]]:
    """Total tokens/s (all streams' tokens over the burst's wall time) at each level of
    concurrent chats, the targets' bursts alternating. Per target, the p50 over its ``runs``
    bursts (one burst disturbed by other work on the machine moves it less than a sum would),
    and each burst's figure (``tokens_per_s_bursts``, paired across targets by index)."""

    async def burst(target: Target, concurrency: int) -> tuple[float, list[StreamTiming]]:
        # A session per burst: each chat gets its own fresh connection.
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
            started = time.perf_counter()
            chats = (target.stream(session, STORY, seed=i) for i in range(concurrency))
            timings = list(await asyncio.gather(*chats))
            return sum(t.tokens for t in timings) / (time.perf_counter() - started), timings

    results = []
    for concurrency in levels:
        rates: dict[str, list[float]] = {name: [] for name in targets}
        timings: dict[str, list[StreamTiming]] = {name: [] for name in targets}
        for rnd in range(runs):

            async def one_round(
                rnd: int = rnd, c: int = concurrency
            ) -> dict[str, tuple[float, list[StreamTiming]]]:
                got = {}
                for name in orders(rnd, list(targets)):
                    got[name] = await burst(targets[name], c)
                    await asyncio.sleep(0.1)
                return got

            got = await rounds.run(f"tokens/s round {rnd} at {concurrency} chat(s)", one_round)
            for name, (rate, chats) in got.items():
                rates[name].append(rate)
                timings[name] += chats
        entry: dict[str, Any] = {"concurrency": concurrency}
        for name in targets:
            entry[name] = {
                "bursts": runs,
                "tokens": sum(t.tokens for t in timings[name]),
                "tokens_per_s": round(statistics.median(rates[name]), 1),
                "tokens_per_s_bursts": [round(r, 1) for r in rates[name]],
                "per_chat_tokens_per_s": summary([t.decode_rate for t in timings[name]]),
                "ttft_ms": summary([t.ttft for t in timings[name]], 1000.0),
            }
        results.append(entry)
    return results
