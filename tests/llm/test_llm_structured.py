"""Structured output: ``response_format`` is enforced with a grammar, so even the tiny bundled
model answers with JSON that matches the schema. Tests assert structure, never content."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import openai
import pytest
from langchain_openai import ChatOpenAI
from llm_server import LLMServer
from pydantic import BaseModel, ConfigDict

MODEL = "smollm2-135m-instruct"


class Person(BaseModel):
    name: str
    age: int
    pet: Literal["cat", "dog", "none"]


class Address(BaseModel):
    city: str
    country: str


class Customer(BaseModel):
    """Nested models become ``$defs`` and ``$ref``s in the schema."""

    model_config = ConfigDict(extra="forbid")
    name: str
    address: Address
    vip: bool


@pytest.fixture
def client(llm: LLMServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm.url + "/v1", api_key="unused", max_retries=0, timeout=90)


def ask(content: str) -> list[Any]:
    return [{"role": "user", "content": content}]


def test_parse_with_a_pydantic_model_succeeds_20_of_20(client: openai.OpenAI) -> None:
    """The SDK's ``.parse()`` sends the model's strict JSON schema and validates the answer."""

    def once(seed: int) -> Person:
        done = client.chat.completions.parse(
            model=MODEL,
            messages=ask("Invent a person."),
            response_format=Person,
            max_tokens=48,
            seed=seed,
            temperature=1.0,
        )
        choice = done.choices[0]
        assert choice.finish_reason == "stop", choice
        assert choice.message.parsed is not None
        # Compact JSON, as OpenAI writes it.
        assert "\n" not in (choice.message.content or "")
        return choice.message.parsed

    with ThreadPoolExecutor(2) as pool:  # the server has 2 slots
        people = list(pool.map(once, range(20)))
    assert len(people) == 20 and all(isinstance(p, Person) for p in people)


def test_streamed_json_schema_answer_parses(client: openai.OpenAI) -> None:
    schema = Person.model_json_schema()
    schema["additionalProperties"] = False
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ask("Invent a person."),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
        max_tokens=48,
        seed=7,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3  # streamed token by token, not in one piece
    Person.model_validate_json(text)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_nested_models_with_refs_are_enforced(client: openai.OpenAI) -> None:
    done = client.chat.completions.parse(
        model=MODEL,
        messages=ask("Invent a customer."),
        response_format=Customer,
        max_tokens=64,
        seed=3,
    )
    assert isinstance(done.choices[0].message.parsed, Customer)


def test_json_object_answer_is_a_json_object(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model=MODEL,
        messages=ask("Describe a cat as JSON with the keys name and color."),
        response_format={"type": "json_object"},
        max_tokens=64,
        temperature=0,
    )
    choice = done.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content or ""), dict)


def test_text_response_format_is_plain_text(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model=MODEL, messages=ask("Say hello."), response_format={"type": "text"}, max_tokens=4
    )
    assert done.choices[0].message.content


def test_langchain_with_structured_output(llm: LLMServer) -> None:
    chat = ChatOpenAI(
        base_url=llm.url + "/v1",
        api_key="unused",  # type: ignore[arg-type]
        model=MODEL,
        max_retries=0,
        max_tokens=64,  # type: ignore[call-arg]
        seed=3,
    )
    # The default method sends response_format json_schema; function_calling forces a tool call.
    for method in ("json_schema", "function_calling"):
        person = chat.with_structured_output(Person, method=method).invoke("Invent a person.")  # type: ignore[arg-type]
        assert isinstance(person, Person), (method, person)


@pytest.mark.parametrize(
    ("response_format", "param", "code"),
    [
        ("json", "response_format", "invalid_type"),
        ({"type": "xml"}, "response_format.type", "invalid_value"),
        ({"type": "json_schema"}, "response_format.json_schema", "missing_required_parameter"),
        (
            {"type": "json_schema", "json_schema": {"schema": {}}},
            "response_format.json_schema.name",
            "missing_required_parameter",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}},
            "response_format.json_schema.name",
            "invalid_value",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}},
            "response_format.json_schema.schema",
            "invalid_value",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}},
            "response_format.json_schema.schema",
            "invalid_value",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/y"}}},
            "response_format.json_schema.schema",
            "invalid_value",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schemas": {}}},
            "response_format.json_schema.schemas",
            "unknown_parameter",
        ),
    ],
)
def test_bad_response_format_is_400_naming_it(
    client: openai.OpenAI, response_format: Any, param: str, code: str
) -> None:
    """A schema the grammar engine cannot enforce is refused, never answered unconstrained."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=ask("hi"),
            response_format=response_format,
            max_tokens=2,
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param and error["code"] == code, error
    assert "Traceback" not in error["message"] and "%llguidance" not in error["message"]
