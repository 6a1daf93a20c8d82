"""Streaming over real sockets: disconnects stop the model, slots are shared, SIGTERM is clean."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import aiohttp
import pytest
from llm_server import LLMServer, async_wait_for

STORY = [{"role": "user", "content": "Tell me a very long story about a lighthouse keeper."}]


async def read_events(resp: aiohttp.ClientResponse, count: int) -> list[str]:
    """The next ``count`` SSE data payloads."""
    events: list[str] = []
    while len(events) < count:
        line = await resp.content.readline()
        assert line, "stream ended early"
        if line.startswith(b"data: "):
            events.append(line[6:].decode().strip())
    return events


async def test_disconnect_stops_generation_within_a_token(llm: LLMServer) -> None:
    before = llm.stats()
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{llm.url}/v1/chat/completions",
            json={"messages": STORY, "max_tokens": 1500, "stream": True, "temperature": 0.9},
        )
        assert resp.status == 200
        await read_events(resp, 6)
        at_close = llm.stats()
        assert at_close["active_generations"] == 1
        closed_at = time.monotonic()
        resp.close()  # drops the connection mid-stream

        stats = await async_wait_for(
            lambda: (s := llm.stats())["active_generations"] == 0 and s["slots_busy"] == 0 and s,
            deadline_s=5,
            what="the generation to stop",
        )
        stopped_after = time.monotonic() - closed_at
    assert stats["cancelled_total"] == before["cancelled_total"] + 1
    generated = stats["tokens_generated_total"] - before["tokens_generated_total"]
    # It read 6 chunks of a 1500-token answer; after the client's last read the model made at
    # most 2 more tokens (the one in flight, and the one whose write found the socket closed).
    assert 5 <= generated, generated
    assert stats["tokens_generated_total"] - at_close["tokens_generated_total"] <= 2, (at_close, stats)
    assert stopped_after < 2.0
    assert stats["last_cancel_to_stop_ms"] is not None and stats["last_cancel_to_stop_ms"] < 500
    # And the count stays put: nothing is generating any more.
    assert llm.stats()["tokens_generated_total"] == stats["tokens_generated_total"]


async def test_parallel_streams_progress_together(llm: LLMServer) -> None:
    """With 2 slots, two chats interleave: each gets tokens before the other finishes."""
    arrivals: dict[int, list[float]] = {0: [], 1: []}

    async def chat(session: aiohttp.ClientSession, index: int) -> None:
        body = {"messages": STORY, "max_tokens": 40, "stream": True, "seed": index}
        async with session.post(f"{llm.url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    chunk = json.loads(line[6:])
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        arrivals[index].append(time.monotonic())

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(chat(session, 0), chat(session, 1))
    first, second = arrivals[0], arrivals[1]
    assert len(first) > 5 and len(second) > 5
    assert first[0] < second[-1] and second[0] < first[-1]


async def test_sigterm_ends_open_streams_and_exits_cleanly(tmp_path: Path) -> None:
    server = LLMServer(tmp_path).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{server.url}/v1/chat/completions",
                json={"messages": STORY, "max_tokens": 1500, "stream": True},
            ) as resp:
                await read_events(resp, 3)
                started = time.monotonic()
                assert server.proc is not None
                server.proc.terminate()
                rest = await resp.content.read()
        # The stream says it was cut short (OpenAI's SDK raises on this event) ...
        assert b"event: error" in rest and b"[DONE]" not in rest
        # ... and the process exits 0, promptly, leaving no children.
        assert await asyncio.to_thread(server.proc.wait, 10) == 0
        assert time.monotonic() - started < 5
        with pytest.raises(ProcessLookupError):  # nothing is left in its process group
            os.killpg(server.proc.pid, 0)
        assert "Traceback" not in server.log()
    finally:
        server.close()


async def test_queued_request_waits_for_a_slot_and_overflow_gets_429(tmp_path: Path) -> None:
    server = LLMServer(tmp_path, "--parallel", "1", "--queue-size", "1").start()
    url = f"{server.url}/v1/chat/completions"
    short = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    try:
        async with aiohttp.ClientSession() as session:
            running = await session.post(
                url, json={"messages": STORY, "max_tokens": 1500, "stream": True}
            )
            await read_events(running, 2)
            queued = asyncio.create_task(session.post(url, json=short))
            await async_wait_for(lambda: server.stats()["queued"] == 1, what="a queued request")
            async with session.post(url, json=short) as overflow:
                assert overflow.status == 429
            assert not queued.done()
            running.close()  # frees the slot: the queued request runs
            async with await queued as served:
                assert served.status == 200
                assert (await served.json())["usage"]["completion_tokens"] == 3
    finally:
        server.close()
