"""Reading OpenAI request bodies: validate them and turn them into what the model is asked.

Validation happens here, before a slot is taken, so a bad request costs no model time and its
error names the parameter at fault (as OpenAI's does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from . import _errors as errors

Kind = Literal["chat", "completion"]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_MAX_STOP_SEQUENCES = 16


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One validated request. ``engine_body`` is what llama.cpp's server is sent: always a stream,
    always with usage, whatever the client asked for (the HTTP layer reshapes the answer)."""

    kind: Kind
    model: str | None
    stream: bool
    include_usage: bool
    engine_body: dict[str, Any]


def parse_chat_request(body: object) -> GenerationRequest:
    fields = _object(body)
    if "messages" not in fields:
        raise errors.missing_parameter("messages")
    messages = _messages(fields["messages"])
    return _request("chat", fields, {"messages": messages})


def parse_completion_request(body: object) -> GenerationRequest:
    fields = _object(body)
    if "prompt" not in fields:
        raise errors.missing_parameter("prompt")
    prompt = fields["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise errors.invalid_type("prompt", "a string (or an array of one string)", prompt)
    return _request("completion", fields, {"prompt": prompt})


def requested_model(body: object) -> str | None:
    """The ``model`` a body names, if it names one as a string (checked before the rest)."""
    if isinstance(body, dict):
        model = body.get("model")
        if isinstance(model, str):
            return model
    return None


def _request(kind: Kind, fields: dict[str, Any], engine_body: dict[str, Any]) -> GenerationRequest:
    model = fields.get("model")
    if model is not None and not isinstance(model, str):
        raise errors.invalid_type("model", "a string", model)
    stream = _optional_bool(fields, "stream") or False
    include_usage = False
    options = fields.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise errors.invalid_type("stream_options", "an object", options)
        if not stream:
            raise errors.invalid_value("stream_options", "only allowed when 'stream' is true.")
        include_usage = (
            _optional_bool(options, "include_usage", "stream_options.include_usage") or False
        )

    n = fields.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise errors.invalid_value("n", "only n=1 is supported by this server.")

    max_tokens = _optional_int(fields, "max_tokens", minimum=1)
    max_completion_tokens = _optional_int(fields, "max_completion_tokens", minimum=1)
    if max_completion_tokens is not None:
        max_tokens = max_completion_tokens
    if max_tokens is not None:
        engine_body["max_tokens"] = max_tokens

    for name, low, high in (
        ("temperature", 0.0, 2.0),
        ("top_p", 0.0, 1.0),
        ("presence_penalty", -2.0, 2.0),
        ("frequency_penalty", -2.0, 2.0),
    ):
        value = _optional_number(fields, name, low, high)
        if value is not None:
            engine_body[name] = value

    seed = _optional_int(fields, "seed")
    if seed is not None:
        # llama.cpp takes a 32-bit seed, and its all-ones value means "random".
        engine_body["seed"] = seed % 0xFFFFFFFF

    stop = _stop(fields.get("stop"))
    if stop:
        engine_body["stop"] = stop

    engine_body["stream"] = True
    engine_body["stream_options"] = {"include_usage": True}
    return GenerationRequest(
        kind=kind, model=model, stream=stream, include_usage=include_usage, engine_body=engine_body
    )


def _object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise errors.OpenAIError(
            f"The request body must be a JSON object, not {errors.json_type_name(body)}."
        )
    return body


def _messages(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise errors.invalid_type("messages", "an array", value)
    if not value:
        raise errors.invalid_value("messages", "expected an array with at least one message.")
    messages: list[dict[str, str]] = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise errors.invalid_type(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise errors.missing_parameter(f"{where}.role")
        if not isinstance(role, str):
            raise errors.invalid_type(f"{where}.role", "a string", role)
        if role not in _ROLES:
            raise errors.invalid_value(
                f"{where}.role", f"{role!r} is not one of {', '.join(sorted(_ROLES))}."
            )
        # Small chat templates know only system/user/assistant; OpenAI's newer "developer"
        # role means the same as "system".
        messages.append(
            {
                "role": "system" if role == "developer" else role,
                "content": _content(message.get("content"), f"{where}.content", role),
            }
        )
    return messages


def _content(value: object, where: str, role: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        if role == "assistant":
            return ""
        raise errors.missing_parameter(where)
    if isinstance(value, list):
        parts: list[str] = []
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise errors.invalid_value(
                    f"{where}[{index}]", "only text content parts are supported by this model."
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise errors.invalid_type(f"{where}[{index}].text", "a string", text)
            parts.append(text)
        return "".join(parts)
    raise errors.invalid_type(where, "a string or an array of content parts", value)


def _stop(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if not isinstance(value, list):
        raise errors.invalid_type("stop", "a string or an array of strings", value)
    if len(value) > _MAX_STOP_SEQUENCES:
        raise errors.invalid_value("stop", f"at most {_MAX_STOP_SEQUENCES} sequences are allowed.")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise errors.invalid_type(f"stop[{index}]", "a string", item)
    return [item for item in value if item]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_bool(fields: dict[str, Any], name: str, param: str | None = None) -> bool | None:
    value = fields.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise errors.invalid_type(param or name, "a boolean", value)


def _optional_int(fields: dict[str, Any], name: str, minimum: int | None = None) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise errors.invalid_type(name, "an integer", value)
    if minimum is not None and value < minimum:
        raise errors.invalid_value(name, f"expected a value >= {minimum}, but got {value}.")
    return int(value)


def _optional_number(fields: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise errors.invalid_type(name, "a decimal", value)
    if not low <= value <= high:
        raise errors.invalid_value(
            name, f"expected a value between {low:g} and {high:g}, but got {value}."
        )
    return float(value)
