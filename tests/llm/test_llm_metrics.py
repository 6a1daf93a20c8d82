"""``GET /metrics`` of `streamfaas llm`, after real generations against a real server process."""

from __future__ import annotations

import json

import aiohttp
import httpx
from llm_server import API_KEY, LLMServer, async_wait_for
from prometheus_client.parser import text_string_to_metric_families

AUTH = {"Authorization": f"Bearer {API_KEY}"}
HELLO = [{"role": "user", "content": "Say hello."}]


def _metrics(server: LLMServer) -> dict[str, float]:
    """Samples without buckets, by name (the only label is model_name)."""
    r = httpx.get(server.url + "/metrics", timeout=30)  # no API key needed, as vLLM's
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {
        s.name: s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if "le" not in s.labels and s.name.startswith("streamfaas_llm_")
    }


def test_a_streamed_completion_moves_the_metrics(llm: LLMServer) -> None:
    before = _metrics(llm)
    body = {"messages": HELLO, "max_tokens": 8, "stream": True, "stream_options": {"include_usage": True}}
    usage: dict[str, int] = {}
    with httpx.stream("POST", llm.url + "/v1/chat/completions", json=body, timeout=90) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and '"usage":{' in line.replace(" ", ""):
                usage = json.loads(line[6:])["usage"] or usage
    after = _metrics(llm)
    assert usage, "the stream carried no usage"

    def delta(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert delta("streamfaas_llm_time_to_first_token_seconds_count") == 1
    assert 0 < delta("streamfaas_llm_time_to_first_token_seconds_sum") < 90
    assert delta("streamfaas_llm_inter_token_latency_seconds_count") >= 1
    assert delta("streamfaas_llm_prompt_tokens_total") == usage["prompt_tokens"]
    assert delta("streamfaas_llm_generation_tokens_total") == usage["completion_tokens"]
    assert after["streamfaas_llm_num_requests_running"] == 0
    assert after["streamfaas_llm_num_requests_waiting"] == 0


async def test_a_429_is_counted_and_running_requests_show(guarded_llm: LLMServer) -> None:
    url = f"{guarded_llm.url}/v1/chat/completions"
    long = {"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 1500, "stream": True}
    before = _metrics(guarded_llm)["streamfaas_llm_requests_rejected_total"]
    async with aiohttp.ClientSession(headers=AUTH) as session:
        async with session.post(url, json=long) as running:
            assert running.status == 200
            await running.content.readline()  # the one slot is now generating
            assert _metrics(guarded_llm)["streamfaas_llm_num_requests_running"] == 1
            async with session.post(url, json={"messages": HELLO, "max_tokens": 2}) as rejected:
                assert rejected.status == 429
    assert _metrics(guarded_llm)["streamfaas_llm_requests_rejected_total"] == before + 1
    await async_wait_for(
        lambda: _metrics(guarded_llm)["streamfaas_llm_num_requests_running"] == 0, what="the slot to free"
    )
