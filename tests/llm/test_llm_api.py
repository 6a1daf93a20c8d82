"""The OpenAI API's shapes, as OpenAI's own SDK reads them, against a real server process."""

from __future__ import annotations

import re

import openai
import pytest
from llm_server import LLMServer

MODEL = "smollm2-135m-instruct"
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def client(llm: LLMServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm.url + "/v1", api_key="unused", max_retries=0, timeout=90)


def test_banner_names_the_listening_address(llm: LLMServer) -> None:
    assert re.fullmatch(r"streamfaas llm listening on http://127\.0\.0\.1:\d+", llm.banner)
    assert llm.banner.endswith(llm.url.rsplit(":", 1)[1])


def test_models_lists_the_bundled_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model"
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion_has_openai_shape(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8)  # type: ignore[arg-type]
    assert done.id.startswith("chatcmpl-")
    assert done.object == "chat.completion"
    assert done.model == MODEL
    assert done.created > 0
    choice = done.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    assert done.usage is not None
    assert 0 < done.usage.completion_tokens <= 8
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens


def test_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    long = [{"role": "user", "content": "Write a long story about a dragon."}]
    for limit in ({"max_tokens": 3}, {"max_completion_tokens": 3}):
        done = client.chat.completions.create(model=MODEL, messages=long, **limit)  # type: ignore[arg-type,call-overload]
        assert done.choices[0].finish_reason == "length"
        assert done.usage is not None and done.usage.completion_tokens == 3


def test_chat_stream_has_openai_chunks(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, stream=True)  # type: ignore[arg-type]
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)


def test_include_usage_adds_a_final_usage_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and 0 < last.usage.completion_tokens <= 6
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason in {"stop", "length"}


def test_completions_streamed_and_not(client: openai.OpenAI) -> None:
    done = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
    assert done.id.startswith("cmpl-") and done.object == "text_completion"
    assert done.choices[0].text and done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.completion_tokens == 5

    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="Once upon a time",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_fixed_seed_gives_the_same_output_twice(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Invent a name for a cat."}]

    def once() -> str:
        done = client.chat.completions.create(
            model=MODEL,
            messages=ask,
            max_tokens=24,
            temperature=1.0,
            top_p=0.95,
            seed=1234,  # type: ignore[arg-type]
        )
        return done.choices[0].message.content or ""

    first = once()
    assert first
    assert once() == first


def test_stop_sequence_ends_the_text(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    done = client.chat.completions.create(
        model=MODEL, messages=ask, max_tokens=60, stop=["7"], seed=1
    )  # type: ignore[arg-type]
    text = done.choices[0].message.content or ""
    assert "7" not in text
    assert done.choices[0].finish_reason == "stop"
    single = client.chat.completions.create(
        model=MODEL, messages=ask, max_tokens=60, stop=",", seed=1
    )  # type: ignore[arg-type]
    assert "," not in (single.choices[0].message.content or "")


def test_file_stem_is_accepted_as_model_name(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=HELLO,
        max_tokens=2,  # type: ignore[arg-type]
    )
    assert done.model == MODEL


def test_healthz(llm: LLMServer) -> None:
    assert llm.get_json("/healthz")["status"] == "ok"
