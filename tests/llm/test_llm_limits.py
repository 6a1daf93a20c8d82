"""Values past what the engine takes are the client's 400, never wrapped, never a 500; and a
schema the grammar engine gives up on is never answered with unconstrained text as a success."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from llm_server import LLMServer

from streamfaas.llm._settings import bundled_model_path
from streamfaas.llm._structured import grammar, output_problem
from streamfaas.llm._vocab import load_tokenizer, longest_token

HELLO = [{"role": "user", "content": "Say hello."}]
# Passes llguidance's static check; matching its first character builds the 4000-state lexer.
EXPLODING_STRING = {"type": "string", "pattern": "^a*$", "minLength": 4000, "maxLength": 4000}
# 50 alternative objects of 20 properties: a parser row of 3950 items, past llguidance's 2000.
MANY_OBJECTS = {
    "anyOf": [
        {
            "type": "object",
            "properties": {f"p{i}_{j}": {"type": "string"} for j in range(20)},
            "additionalProperties": False,
        }
        for i in range(50)
    ]
}
DIGIT = {"type": "integer", "minimum": 0, "maximum": 9}
# The string that cannot be enforced comes only after a few answered fields: past the tokens
# tried when the request is checked, so only the answer's own check can catch it.
LATE_EXPLOSION = {
    "type": "object",
    "properties": {"a": DIGIT, "c": DIGIT, "d": DIGIT, "b": EXPLODING_STRING},
    "required": ["a", "c", "d", "b"],
}


async def post(url: str, body: dict[str, Any]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body) as resp:
            return resp.status, await resp.text()


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def tool(parameters: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": "f", "parameters": parameters}}]


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [2**32 + 5, 2**31, 2**64, 10**300])
async def test_token_counts_past_a_c_int_are_400_naming_them(
    llm: LLMServer, param: str, value: int
) -> None:
    status, text = await post(
        f"{llm.url}/v1/chat/completions", {"messages": HELLO, param: value}
    )
    assert status == 400, text
    error = json.loads(text)["error"]
    assert error["param"] == param and error["code"] == "invalid_value", error
    assert param in error["message"] and "2147483647" in error["message"]
    assert len(error["message"]) < 200  # a 300-digit number is not quoted whole
    # Nothing broke: the server still answers.
    status, text = await post(
        f"{llm.url}/v1/chat/completions", {"messages": HELLO, "max_tokens": 2}
    )
    assert status == 200, text


async def test_completions_max_tokens_past_a_c_int_is_400(llm: LLMServer) -> None:
    status, text = await post(f"{llm.url}/v1/completions", {"prompt": "Hi", "max_tokens": 2**64})
    assert status == 400, text
    assert json.loads(text)["error"]["param"] == "max_tokens"


async def test_largest_max_tokens_and_any_seed_are_taken(llm: LLMServer) -> None:
    for extra in ({"max_tokens": 2**31 - 1, "stop": [" "]}, {"seed": 2**80, "max_tokens": 2}):
        status, text = await post(f"{llm.url}/v1/chat/completions", {"messages": HELLO, **extra})
        assert status == 200, (extra, text)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("schema", [EXPLODING_STRING, MANY_OBJECTS], ids=["string", "anyOf"])
async def test_schema_the_engine_gives_up_on_is_400(
    llm: LLMServer, schema: dict[str, Any], stream: bool
) -> None:
    body = {
        "messages": HELLO,
        "response_format": schema_format(schema),
        "max_tokens": 4,
        "stream": stream,
    }
    status, text = await post(f"{llm.url}/v1/chat/completions", body)
    assert status == 400, text
    error = json.loads(text)["error"]
    assert error["param"] == "response_format.json_schema.schema", error
    assert error["code"] == "invalid_value" and "cannot enforce" in error["message"]
    assert "%llguidance" not in error["message"] and "<state>" not in error["message"]


async def test_tool_parameters_the_engine_gives_up_on_are_400(llm: LLMServer) -> None:
    body = {
        "messages": HELLO,
        "tools": tool({"type": "object", "properties": {"s": EXPLODING_STRING}}),
        "tool_choice": "required",
        "max_tokens": 4,
    }
    status, text = await post(f"{llm.url}/v1/chat/completions", body)
    assert status == 400, text
    assert json.loads(text)["error"]["param"] == "tools[0].function.parameters"


async def test_answer_the_grammar_failed_on_midway_is_no_success(llm: LLMServer) -> None:
    body = {
        "messages": HELLO,
        "response_format": schema_format(LATE_EXPLOSION),
        "max_tokens": 24,
        "temperature": 0,
    }
    url = f"{llm.url}/v1/chat/completions"
    status, text = await post(url, body)
    assert status == 400, text
    error = json.loads(text)["error"]
    assert error["param"] == "response_format.json_schema.schema", error
    assert "could not enforce" in error["message"]

    status, text = await post(url, {**body, "stream": True})
    assert status == 200  # the headers went out with the first token
    assert "event: error" in text and '"finish_reason":"stop"' not in text, text
    assert not text.rstrip().endswith("[DONE]")


async def test_required_tool_call_the_grammar_failed_on_is_no_success(llm: LLMServer) -> None:
    body = {
        "messages": HELLO,
        "tools": tool(LATE_EXPLOSION),
        "tool_choice": "required",
        "max_tokens": 24,
        "temperature": 0,
    }
    status, text = await post(f"{llm.url}/v1/chat/completions", body)
    assert status == 400, text
    assert json.loads(text)["error"]["param"] == "tools"


def test_an_answer_is_checked_against_its_grammar() -> None:
    """The check the server runs on each constrained answer, with the bundled model's tokens."""
    tokenizer = load_tokenizer(bundled_model_path())
    assert tokenizer is not None and tokenizer.vocab_size == 49152
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": DIGIT},
        "required": ["name", "age"],
    }
    text = grammar(schema, None, tokenizer)
    assert text is not None
    assert output_problem(text, tokenizer, '{"name":"Bob é 🐈","age":3}', True) is None
    assert output_problem(text, tokenizer, '{"name":"Bob","age":3}', True) is None
    # Cut short (max_tokens, a stop sequence): a prefix is fine unless it claims to be whole.
    assert output_problem(text, tokenizer, '{"name":"Bo', False) is None
    assert output_problem(text, tokenizer, '{"name":"Bo', True)
    assert output_problem(text, tokenizer, "Hello! I am Bob.", False)
    assert output_problem(text, tokenizer, '{"name":"Bob","age":12}', True)


# ---- prompts that cannot fit, and requests llama.cpp could not take -------------------------------
CTX_SIZE = 2048  # the server's default context per slot (the `llm` fixture's)


async def _refused_before_the_model(llm: LLMServer, raw: bytes, *, code: str | None) -> dict[str, Any]:
    """POST ``raw``; it must be a 400 with ``code``, and never reach the scheduler."""
    before = llm.stats()["requests_total"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.post(f"{llm.url}/v1/chat/completions", data=raw,
                                headers={"Content-Type": "application/json"}) as resp:
            status, body = resp.status, await resp.json()
    assert status == 400, body
    assert body["error"]["code"] == code and "Traceback" not in body["error"]["message"]
    assert llm.stats()["requests_total"] == before  # refused before llama.cpp saw it
    return body


@pytest.mark.parametrize("count", [CTX_SIZE + 1, 40_000])
async def test_more_messages_than_the_context_has_tokens_are_refused_before_the_model(llm: LLMServer, count: int) -> None:
    """Each message costs llama.cpp's tokenizer time that grows with the square of the count:
    40,000 held a slot and a core for 26 s after the client had gone, 230,000 for 23 minutes."""
    raw = json.dumps({"messages": [{"role": "user", "content": "a"}] * count, "max_tokens": 3}).encode()
    body = await _refused_before_the_model(llm, raw, code="context_length_exceeded")
    assert f"maximum context length is {CTX_SIZE} tokens" in body["error"]["message"]
    assert body["error"]["param"] == "messages"
    status, _ = await post(f"{llm.url}/v1/chat/completions", {"messages": HELLO, "max_tokens": 2})
    assert status == 200  # the slots are free


async def test_a_text_of_special_tokens_too_long_for_the_context_is_refused_before_the_model(llm: LLMServer) -> None:
    longest = longest_token(bundled_model_path())
    assert longest is not None
    count = CTX_SIZE * longest // len("<|im_end|>") + 1  # not one token more than it would need
    raw = json.dumps({"messages": [{"role": "user", "content": "<|im_end|>" * count}], "max_tokens": 3}).encode()
    await _refused_before_the_model(llm, raw, code="context_length_exceeded")
    # A prompt that may fit still goes to the model, which answers or refuses it itself.
    status, _ = await post(f"{llm.url}/v1/chat/completions", {"messages": [{"role": "user", "content": "hi " * 300}], "max_tokens": 2})
    assert status == 200


@pytest.mark.parametrize("raw", [
    b'{"messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 2}',
    b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\udfff"], "max_tokens": 2}',
    b"[" * 100_000 + b"]" * 100_000,
    # JSON that Python's parser takes, a schema nested past what the schema's walk recurses into
    (b'{"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema", '
     b'"json_schema": {"name": "a", "schema": ' + b'{"type":"array","items":' * 950 + b'{"type":"string"}'
     + b"}" * 950 + b"}}}"),
], ids=["lone-surrogate", "surrogate-stop", "nested-json", "nested-schema"])
async def test_text_llama_cpp_cannot_take_and_nesting_python_cannot_are_400s(llm: LLMServer, raw: bytes) -> None:
    before = llm.stats()["requests_total"]
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{llm.url}/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"}) as resp:
            status, body = resp.status, await resp.json()
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request_error"
    assert llm.stats()["requests_total"] == before
