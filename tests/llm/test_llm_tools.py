"""Tool calls: described in the prompt, constrained by a grammar to one of the tools and its
argument schema, returned (and streamed) as OpenAI's ``tool_calls``."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from llm_server import LLMServer
from pydantic import BaseModel

from streamfaas.llm._errors import OpenAIError
from streamfaas.llm._requests import parse_chat_request
from streamfaas.llm._structured import ToolUse, parse_tools
from streamfaas.llm._toolcalls import Arguments, CallStart, Content, ToolCallReader

MODEL = "smollm2-135m-instruct"
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


class Weather(BaseModel):
    city: str
    unit: str


class Sum(BaseModel):
    a: int
    b: int


def function(name: str, description: str, model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema["additionalProperties"] = False
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": schema},
    }


TOOLS = [
    function("get_weather", "Get the current weather in a city.", Weather),
    function("add", "Add two integers.", Sum),
]
ARGUMENTS = {"get_weather": Weather, "add": Sum}


@pytest.fixture
def client(llm: LLMServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm.url + "/v1", api_key="unused", max_retries=0, timeout=90)


def test_named_tool_choice_yields_a_valid_call(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=48,
        seed=1,
    )
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    Weather.model_validate_json(call.function.arguments)  # type: ignore[union-attr]


def test_required_tool_choice_calls_one_of_the_tools(client: openai.OpenAI) -> None:
    for seed, question in enumerate(["What is 2 plus 3?", "Is it raining in Oslo?"]):
        done = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": question}],
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=48,
            seed=seed,
        )
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls"
        call = choice.message.tool_calls[0]  # type: ignore[index]
        name = call.function.name  # type: ignore[union-attr]
        assert name in ARGUMENTS
        ARGUMENTS[name].model_validate_json(call.function.arguments)  # type: ignore[union-attr]


def test_streamed_tool_call_has_delta_tool_calls(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=48,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    parts = [call for d in deltas for call in d.tool_calls or []]
    assert parts and parts[0].id and parts[0].id.startswith("call_")
    assert parts[0].type == "function" and parts[0].function is not None
    assert parts[0].function.name == "get_weather"
    assert all(p.index == 0 for p in parts)
    assert len(parts) > 2  # the arguments arrive as they are generated
    arguments = "".join(p.function.arguments or "" for p in parts if p.function)
    Weather.model_validate_json(arguments)
    assert not any(d.content for d in deltas)
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishing[-1] == "tool_calls" and not any(finishing[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_auto_answers_or_calls_and_says_which(client: openai.OpenAI) -> None:
    """With "auto" the grammar has both branches; whichever the model takes is well formed."""
    for seed in range(3):
        done = client.chat.completions.create(
            model=MODEL,
            messages=WEATHER_QUESTION,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            max_tokens=32,
            seed=seed,
        )
        choice = done.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls" and choice.message.content is None
            call = choice.message.tool_calls[0]
            name = call.function.name  # type: ignore[union-attr]
            ARGUMENTS[name].model_validate_json(call.function.arguments)  # type: ignore[union-attr]
        else:
            assert choice.message.content and not choice.message.content.startswith("{")
            assert choice.finish_reason in {"stop", "length"}


def test_auto_with_a_json_schema_answers_with_a_call_or_that_json(client: openai.OpenAI) -> None:
    answer_schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    stream = client.chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": answer_schema},
        },
        max_tokens=40,
        seed=0,
        stream=True,
    )
    deltas = [c.choices[0].delta for c in stream if c.choices]
    text = "".join(d.content or "" for d in deltas)
    parts = [call for d in deltas for call in d.tool_calls or []]
    if parts:
        assert not text and parts[0].function is not None
        name = parts[0].function.name or ""
        arguments = "".join(p.function.arguments or "" for p in parts if p.function)
        ARGUMENTS[name].model_validate_json(arguments)
    else:
        assert set(json.loads(text)) == {"answer"}


def test_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        max_tokens=8,
    )
    assert done.choices[0].message.tool_calls is None and done.choices[0].message.content


def test_sdk_parse_with_a_pydantic_function_tool(client: openai.OpenAI) -> None:
    done = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Add 2 and 3."}],
        tools=[openai.pydantic_function_tool(Sum, name="add")],
        tool_choice={"type": "function", "function": {"name": "add"}},
        max_tokens=32,
        seed=2,
    )
    call = done.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert isinstance(call.function.parsed_arguments, Sum)


def test_a_conversation_with_calls_and_results_continues(client: openai.OpenAI) -> None:
    messages: list[Any] = [
        *WEATHER_QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    done = client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=8
    )  # type: ignore[arg-type]
    assert done.choices[0].message.content


def test_langchain_bind_tools(llm: LLMServer) -> None:
    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return "sunny"

    chat = ChatOpenAI(
        base_url=llm.url + "/v1",
        api_key="unused",  # type: ignore[arg-type]
        model=MODEL,
        max_retries=0,
        max_tokens=48,  # type: ignore[call-arg]
        seed=3,
    )
    bound = chat.bind_tools([get_weather], tool_choice="get_weather")
    question = "What is the weather in Paris?"
    message = bound.invoke(question)
    assert isinstance(message, AIMessage)
    assert [call["name"] for call in message.tool_calls] == ["get_weather"]
    assert isinstance(message.tool_calls[0]["args"].get("city"), str)

    chunks = list(bound.stream(question))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk  # type: ignore[assignment]
    assert isinstance(merged, AIMessageChunk)
    assert [call["name"] for call in merged.tool_calls] == ["get_weather"]
    assert isinstance(merged.tool_calls[0]["args"].get("city"), str)

    # The call and its result go back to the model, which then answers.
    result = ToolMessage("sunny", tool_call_id=message.tool_calls[0]["id"])
    answer = chat.bind_tools([get_weather], tool_choice="none").invoke(
        [HumanMessage(question), message, result]
    )
    assert isinstance(answer.content, str) and answer.content


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": "get_weather"}, "tools"),
        ({"tools": []}, "tools"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
        ),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "x", "parameters": {"not": {}}}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": TOOLS[:1] * 2}, "tools[1].function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"parallel_tool_calls": True}, "parallel_tool_calls"),
        ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
    ],
)
def test_bad_tools_are_400_naming_the_parameter(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        parse_chat_request({"messages": WEATHER_QUESTION, **extra})
    assert caught.value.http_status == 400 and caught.value.param == param


def test_a_tool_message_must_answer_a_call() -> None:
    orphan = [*WEATHER_QUESTION, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]
    with pytest.raises(OpenAIError) as caught:
        parse_chat_request({"messages": orphan})
    assert caught.value.param == "messages[1].tool_call_id"


def test_tools_are_described_in_one_system_message() -> None:
    parsed = parse_chat_request(
        {
            "messages": [{"role": "system", "content": "Be brief."}, *WEATHER_QUESTION],
            "tools": TOOLS,
            "tool_choice": "required",
        }
    )
    messages = parsed.engine_body["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert (
        messages[0]["content"].startswith("Be brief.") and "get_weather" in messages[0]["content"]
    )
    assert parsed.engine_body["grammar"].startswith("%llguidance")


def reader(*names: str, required: bool = True) -> ToolCallReader:
    use = parse_tools(
        {
            "tools": [{"type": "function", "function": {"name": name}} for name in names],
            "tool_choice": "required" if required else "auto",
        }
    )
    assert isinstance(use, ToolUse)
    return ToolCallReader(use)


def test_reader_streams_arguments_and_drops_the_closing_brace() -> None:
    r = reader("a", "ab")
    events = []
    for piece in ['{"na', 'me":"ab","arg', 'uments":{"x', '":{"y":1}', "}", "}"]:
        events += r.feed(piece)
    events += r.finish()
    assert isinstance(events[0], CallStart) and events[0].name == "ab"
    assert all(isinstance(e, Arguments) for e in events[1:])
    assert "".join(e.text for e in events[1:] if isinstance(e, Arguments)) == '{"x":{"y":1}}'
    assert r.is_call and r.arguments == '{"x":{"y":1}}'


def test_reader_keeps_everything_of_a_call_cut_short() -> None:
    r = reader("a")
    r.feed('{"name":"a","arguments":{"x":{"y":1}')
    r.feed("}")
    r.finish()
    assert r.arguments == '{"x":{"y":1}}'  # the arguments' own "}", not the call's


def test_reader_passes_an_answer_through_as_content() -> None:
    r = reader("a", required=False)
    assert r.feed("Hel") == [Content("Hel")]
    assert r.feed("lo") == [Content("lo")]
    assert r.finish() == [] and not r.is_call and r.content == "Hello"
    # An answer cut before a call's name was complete comes back as the text it is.
    cut = reader("a")
    assert cut.feed('{"name":"') == []
    assert cut.finish() == [Content('{"name":"')]


def test_prior_calls_are_shown_to_the_model_compact() -> None:
    parsed = parse_chat_request(
        {
            "messages": [
                *WEATHER_QUESTION,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ]
        }
    )
    shown = parsed.engine_body["messages"][1]["content"]
    assert json.loads(shown) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert shown == '{"name":"get_weather","arguments":{"city":"Paris"}}'
