"""No parameter is silently ignored: each is implemented, refused naming it, or on the short
list of those accepted without effect. And every response says which request it answers."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest
from llm_server import API_KEY, LLMServer

from streamfaas.llm._params import IGNORED, IMPLEMENTED, UNSUPPORTED

MODEL = "smollm2-135m-instruct"
HELLO = [{"role": "user", "content": "Say hello."}]


async def post(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=headers) as resp:
            return resp.status, await resp.json(), resp.headers


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"top_logprobs": 3}, "top_logprobs", "unsupported_parameter"),
        ({"logit_bias": {"50256": -100}}, "logit_bias", "unsupported_parameter"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "unsupported_parameter"),
        ({"modalities": ["text", "audio"]}, "modalities", "unsupported_parameter"),
        (
            {"prediction": {"type": "content", "content": "x"}},
            "prediction",
            "unsupported_parameter",
        ),
        ({"reasoning_effort": "low"}, "reasoning_effort", "unsupported_parameter"),
        ({"verbosity": "low"}, "verbosity", "unsupported_parameter"),
        ({"web_search_options": {}}, "web_search_options", "unsupported_parameter"),
        ({"service_tier": "flex"}, "service_tier", "unsupported_parameter"),
        ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
        ({"function_call": "auto"}, "function_call", "unsupported_parameter"),
        ({"n": 2}, "n", "invalid_value"),
        ({"top_k": 40}, "top_k", "unknown_parameter"),
        ({"temprature": 0.5}, "temprature", "unknown_parameter"),
        (
            {"stream": True, "stream_options": {"include_obfuscation": True}},
            "stream_options.include_obfuscation",
            "unsupported_parameter",
        ),
        ({"stream": True, "stream_options": {"foo": 1}}, "stream_options.foo", "unknown_parameter"),
        (
            {"messages": [{"role": "user", "content": "hi", "weight": 1}]},
            "messages[0].weight",
            "unknown_parameter",
        ),
        (
            {"messages": [{"role": "assistant", "content": "hi", "audio": {"id": "a"}}]},
            "messages[0].audio",
            "unsupported_parameter",
        ),
    ],
)
async def test_unimplemented_chat_parameter_is_400_naming_it(
    llm: LLMServer, extra: dict[str, Any], param: str, code: str
) -> None:
    status, body, _ = await post(
        f"{llm.url}/v1/chat/completions", {"messages": HELLO, "max_tokens": 2, **extra}
    )
    assert status == 400
    error = body["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert param.split(".")[-1].split("[")[0] in error["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": 2}, "logprobs"),
        ({"echo": True}, "echo"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "end"}, "suffix"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"tools": []}, "tools"),  # a chat parameter, not a completions one
    ],
)
async def test_unimplemented_completions_parameter_is_400_naming_it(
    llm: LLMServer, extra: dict[str, Any], param: str
) -> None:
    status, body, _ = await post(
        f"{llm.url}/v1/completions", {"prompt": "Once", "max_tokens": 2, **extra}
    )
    assert status == 400 and body["error"]["param"] == param


async def test_defaults_and_ignored_parameters_are_accepted(llm: LLMServer) -> None:
    """Values that ask for nothing missing pass, as do user/store/metadata (README lists them)."""
    chat = {
        "messages": HELLO,
        "max_tokens": 2,
        "n": 1,
        "logprobs": False,
        "top_logprobs": None,
        "logit_bias": {},
        "modalities": ["text"],
        "service_tier": "auto",
        "parallel_tool_calls": None,
        "user": "user-1",
        "safety_identifier": "hash-1",
        "store": False,
        "metadata": {"team": "a"},
        "prompt_cache_key": "k",
        "stream": True,
        "stream_options": {"include_usage": True, "include_obfuscation": False},
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{llm.url}/v1/chat/completions", json=chat) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    completion = {"prompt": "Once", "max_tokens": 2, "echo": False, "best_of": 1, "user": "u"}
    status, body, _ = await post(f"{llm.url}/v1/completions", completion)
    assert status == 200, body


def test_parameter_lists_do_not_overlap() -> None:
    for kind in ("chat", "completion"):
        implemented, ignored, refused = IMPLEMENTED[kind], IGNORED[kind], set(UNSUPPORTED[kind])  # type: ignore[index]
        assert not implemented & ignored and not implemented & refused and not ignored & refused
    assert {"user", "store", "metadata"} <= IGNORED["chat"]


async def test_every_response_carries_a_request_id(llm: LLMServer) -> None:
    seen: set[str] = set()
    async with aiohttp.ClientSession() as session:
        requests = [
            session.post(
                f"{llm.url}/v1/chat/completions", json={"messages": HELLO, "max_tokens": 1}
            ),
            session.post(
                f"{llm.url}/v1/chat/completions",
                json={"messages": HELLO, "max_tokens": 1, "stream": True},
            ),
            session.post(f"{llm.url}/v1/chat/completions", json={"messages": []}),
            session.post(f"{llm.url}/v1/nothing", json={}),
            session.get(f"{llm.url}/v1/models"),
            session.get(f"{llm.url}/healthz"),
        ]
        for request in requests:
            async with request as resp:
                await resp.read()
                rid = resp.headers["x-request-id"]
                assert rid.startswith("req_") and len(rid) > 20
                seen.add(rid)
    assert len(seen) == len(requests)


async def test_generation_responses_carry_rate_limit_headers(llm: LLMServer) -> None:
    status, _, headers = await post(
        f"{llm.url}/v1/chat/completions", {"messages": HELLO, "max_tokens": 1}
    )
    assert status == 200
    # The fixture's server: 2 slots + 8 waiting requests.
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert 0 <= int(headers["x-ratelimit-remaining-requests"]) <= 10
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{llm.url}/v1/models") as resp:
            assert "x-ratelimit-limit-requests" not in resp.headers


def test_sdk_sees_the_request_id(llm: LLMServer) -> None:
    client = openai.OpenAI(base_url=llm.url + "/v1", api_key="unused", max_retries=0)
    done = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)  # type: ignore[arg-type]
    assert done._request_id and done._request_id.startswith("req_")


def test_wrong_api_key_is_openais_401(guarded_llm: LLMServer) -> None:
    wrong = openai.OpenAI(base_url=guarded_llm.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)  # type: ignore[arg-type]
    error = caught.value
    assert error.status_code == 401 and error.code == "invalid_api_key"
    assert error.body == {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    assert error.request_id and error.request_id.startswith("req_")
    assert "sk-wrong" not in guarded_llm.log()
    right = openai.OpenAI(base_url=guarded_llm.url + "/v1", api_key=API_KEY, max_retries=0)
    assert right.models.list().data
