"""Pure logic, in process: request validation, chunk encoding, model names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamfaas.errors import ConfigError
from streamfaas.llm import LLMSettings, bundled_model_path
from streamfaas.llm._errors import OpenAIError
from streamfaas.llm._requests import parse_chat_request, parse_completion_request
from streamfaas.llm._responses import ChunkEncoder, completion_body
from streamfaas.llm._settings import model_name_from_path


def test_chat_request_maps_openai_parameters_to_the_engine() -> None:
    parsed = parse_chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
            "max_completion_tokens": 7,
            "max_tokens": 99,
            "temperature": 0,
            "top_p": 0.5,
            "stop": "x",
            "seed": 5,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert parsed.kind == "chat" and parsed.model == "m"
    assert parsed.stream and parsed.include_usage
    body = parsed.engine_body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "ab"},
    ]
    assert body["max_tokens"] == 7
    assert body["temperature"] == 0.0 and body["top_p"] == 0.5
    assert body["stop"] == ["x"] and body["seed"] == 5
    # The engine always streams and always counts, whatever the client asked.
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x"}], "seed": 1.5}, "seed"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "top_p": float("nan")}, "top_p"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ({"messages": [{"role": "user", "content": "x"}], "model": 3}, "model"),
    ],
)
def test_chat_request_errors_name_the_parameter(body: dict[str, object], param: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        parse_chat_request(body)
    assert caught.value.http_status == 400
    assert caught.value.param == param


def test_completion_prompt_may_be_a_list_of_one() -> None:
    assert parse_completion_request({"prompt": ["hi"]}).engine_body["prompt"] == "hi"
    with pytest.raises(OpenAIError):
        parse_completion_request({"prompt": ["a", "b"]})


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("include_usage", [False, True])
def test_encoded_chunks_are_valid_sse_json(kind: str, include_usage: bool) -> None:
    encoder = ChunkEncoder(kind, "id-1", 123, 'mo"del', include_usage=include_usage)  # type: ignore[arg-type]
    raw = (
        encoder.opening()
        + encoder.text('quote " and \n newline é')
        + encoder.finish("length", {"prompt_tokens": 2, "completion_tokens": 1})
    )
    events = [e for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(c["id"] == "id-1" and c["model"] == 'mo"del' for c in chunks)
    texts = [
        (c["choices"][0]["delta"].get("content") if kind == "chat" else c["choices"][0]["text"])
        for c in chunks
        if c["choices"]
    ]
    assert 'quote " and \n newline é' in texts
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 3
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert all("usage" not in c for c in chunks)


def test_completion_body_defaults() -> None:
    body = completion_body("chat", "chatcmpl-1", 1, "m", "hi", None, None)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_model_names() -> None:
    assert model_name_from_path(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "smollm2-135m-instruct"
    assert (
        model_name_from_path(Path("qwen2.5-0.5b-instruct-q4_k_m.gguf")) == "qwen2.5-0.5b-instruct"
    )
    assert bundled_model_path().suffix == ".gguf"
    assert LLMSettings(model_name="mine").resolved_model_name() == "mine"


def test_settings_reject_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        LLMSettings(parallel=0)
    with pytest.raises(ConfigError, match="does not exist"):
        LLMSettings(model_path=tmp_path / "none.gguf").resolved_model_path()
    empty = tmp_path / "key"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        LLMSettings(api_key_file=empty).read_api_key()
