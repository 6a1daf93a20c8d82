"""Errors come back in OpenAI's JSON shape with the right status, never as a traceback."""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx
import pytest
from llm_server import API_KEY, LLMServer, async_wait_for

HELLO = [{"role": "user", "content": "Say hello."}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def post(
    url: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
        async with session.post(url, headers=headers, **kwargs) as resp:
            return resp.status, await resp.json()


def assert_openai_error(body: Any, *, param: str | None = None, code: str | None = None) -> None:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    assert error["param"] == param
    assert error["code"] == code


async def test_unknown_model_is_404(llm: LLMServer) -> None:
    status, body = await post(
        f"{llm.url}/v1/chat/completions", {"model": "gpt-9", "messages": HELLO}
    )
    assert status == 404
    assert_openai_error(body, param="model", code="model_not_found")


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        (b"{not json", None, None),
        (b"\xff\xfe", None, None),
        (b"[1, 2]", None, None),
        (b'{"model": "smollm2-135m-instruct"}', "messages", "missing_required_parameter"),
        (b'{"messages": "hi"}', "messages", "invalid_type"),
        (b'{"messages": []}', "messages", "invalid_value"),
        (b'{"messages": [{"content": "hi"}]}', "messages[0].role", "missing_required_parameter"),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
            "temperature",
            "invalid_type",
        ),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 7}',
            "temperature",
            "invalid_value",
        ),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": true}',
            "max_tokens",
            "invalid_type",
        ),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "stop": [1]}',
            "stop[0]",
            "invalid_type",
        ),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "stream_options": {}}',
            "stream_options",
            "invalid_value",
        ),
        (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', "n", "invalid_value"),
    ],
)
async def test_bad_chat_request_is_400(
    llm: LLMServer, payload: bytes, param: str | None, code: str | None
) -> None:
    status, body = await post(f"{llm.url}/v1/chat/completions", payload)
    assert status == 400
    assert_openai_error(body, param=param, code=code)


async def test_bad_completion_request_is_400(llm: LLMServer) -> None:
    status, body = await post(f"{llm.url}/v1/completions", {"prompt": 42})
    assert status == 400
    assert_openai_error(body, param="prompt", code="invalid_type")


async def test_prompt_longer_than_context_is_400_even_when_streamed(llm: LLMServer) -> None:
    huge = [{"role": "user", "content": "apple " * 4000}]
    status, body = await post(f"{llm.url}/v1/chat/completions", {"messages": huge, "stream": True})
    assert status == 400
    assert_openai_error(body, code="context_length_exceeded")


async def test_unknown_route_is_404_json(llm: LLMServer) -> None:
    status, body = await post(f"{llm.url}/v1/embeddingz", {})
    assert status == 404
    assert_openai_error(body, code="unknown_url")


async def test_api_key_required_when_configured(guarded_llm: LLMServer) -> None:
    url = f"{guarded_llm.url}/v1/chat/completions"
    request = {"messages": HELLO, "max_tokens": 2}
    status, body = await post(url, request)
    assert status == 401
    assert_openai_error(body)
    status, body = await post(url, request, {"Authorization": "Bearer wrong"})
    assert status == 401
    assert_openai_error(body, code="invalid_api_key")
    status, body = await post(url, request, AUTH)
    assert status == 200 and body["object"] == "chat.completion"
    assert guarded_llm.get_json("/healthz")["status"] == "ok"  # health stays open
    assert API_KEY not in guarded_llm.log()


async def test_busy_server_answers_429(guarded_llm: LLMServer) -> None:
    url = f"{guarded_llm.url}/v1/chat/completions"
    long = {
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": 1500,
        "stream": True,
    }
    async with aiohttp.ClientSession(headers=AUTH) as session:
        async with session.post(url, json=long) as running:
            assert running.status == 200
            await running.content.readline()  # the one slot is now generating
            async with session.post(url, json={"messages": HELLO, "max_tokens": 2}) as rejected:
                assert rejected.status == 429
                assert rejected.headers["Retry-After"] == "1"
                # One slot, no queue: the server takes one request at once, and has it.
                assert rejected.headers["x-ratelimit-limit-requests"] == "1"
                assert rejected.headers["x-ratelimit-remaining-requests"] == "0"
                assert_openai_error(await rejected.json(), code="rate_limit_exceeded")
    # The running stream was dropped: its slot frees and the next request is served.
    await async_wait_for(
        lambda: guarded_llm.stats(AUTH)["active_generations"] == 0, what="the slot to free"
    )
    status, body = await post(url, {"messages": HELLO, "max_tokens": 2}, AUTH)
    assert status == 200
    assert guarded_llm.stats(AUTH)["rejected_total"] >= 1


async def test_more_tools_than_openai_allows_is_400_before_any_is_compiled(llm: LLMServer) -> None:
    # Each tool's parameters are compiled into a grammar: thousands of them held the server
    # for 20 s. 128 is OpenAI's own limit.
    tool = {"type": "function", "function": {"parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}
    tools = [{**tool, "function": {**tool["function"], "name": f"f{i}"}} for i in range(129)]
    status, body = await post(f"{llm.url}/v1/chat/completions", {"messages": HELLO, "tools": tools})
    assert status == 400
    assert_openai_error(body, param="tools", code="invalid_value")
    assert "at most 128" in body["error"]["message"]


async def test_a_body_still_being_read_holds_a_place_and_the_next_request_gets_429(guarded_llm: LLMServer) -> None:
    # Bodies were read (up to 8 MiB each) and parsed before admission: 16 at once took the
    # server to 2.2 GiB. One slot, no queue: a body being sent is that one place.
    import socket as sockets
    from urllib.parse import urlsplit

    parts = urlsplit(guarded_llm.url)
    assert parts.hostname and parts.port
    slow = sockets.create_connection((parts.hostname, parts.port), timeout=30)
    try:
        slow.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {API_KEY}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{{\"messages\": ".encode())

        def call() -> int:
            r = httpx.post(f"{guarded_llm.url}/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2},
                           headers=AUTH, timeout=30)
            return r.status_code

        await async_wait_for(lambda: call() == 429, what="a 429 while the first body is still coming")
    finally:
        slow.close()
    await async_wait_for(lambda: call() == 200, what="its place to be free again once that client went")
