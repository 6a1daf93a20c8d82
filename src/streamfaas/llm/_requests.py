"""Reading OpenAI request bodies: validate them and turn them into what the model is asked.

Validation happens here, before a slot is taken, so a bad request costs no model time and its
error names the parameter at fault (as OpenAI's does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from . import _errors as errors
from ._params import check_parameters
from ._structured import (
    ToolUse,
    call_text,
    grammar,
    parse_response_format,
    parse_tools,
    tool_prompt,
)

Kind = Literal["chat", "completion"]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# A participant's "name" is accepted and not shown to the model (its template has no place for it).
_MESSAGE_KEYS = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "refusal", "tool_calls", "audio"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
}
_MAX_STOP_SEQUENCES = 16
# llama.cpp reads a token count into a C int: a larger one would wrap (2**32 + 5 became 5) or
# fail inside the engine. A count past the context is harmless (generation ends when the slot's
# context is full), so this, not the context size, is the bound.
_MAX_TOKENS = 2**31 - 1


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One validated request. ``engine_body`` is what llama.cpp's server is sent: always a stream,
    always with usage, whatever the client asked for (the HTTP layer reshapes the answer).
    ``tool_use`` is set when the model may answer with a tool call; ``constraint_param`` names
    the parameter whose schema the answer is held to, when it is (an answer that turns out not to
    match is that parameter's error)."""

    kind: Kind
    model: str | None
    stream: bool
    include_usage: bool
    engine_body: dict[str, Any]
    tool_use: ToolUse | None = None
    constraint_param: str | None = None


def parse_chat_request(body: object, tokenizer: Any = None) -> GenerationRequest:
    """``tokenizer``: llguidance's, of the model (``_vocab``), to try each grammar's first tokens."""
    fields = _object(body)
    check_parameters("chat", fields)
    if "messages" not in fields:
        raise errors.missing_parameter("messages")
    messages = _messages(fields["messages"])
    answer_schema = parse_response_format(fields.get("response_format"))
    tool_use = parse_tools(fields)
    engine_body: dict[str, Any] = {"messages": messages}
    if tool_use is not None:
        _add_system_text(messages, tool_prompt(tool_use, answer_is_json=answer_schema is not None))
    constraint = grammar(answer_schema, tool_use, tokenizer)
    param = None
    if constraint is not None:
        engine_body["grammar"] = constraint
        if tool_use is not None:
            param = "tools"
        elif fields["response_format"].get("type") == "json_schema":
            param = "response_format.json_schema.schema"
        else:
            param = "response_format"
    return _request("chat", fields, engine_body, tool_use, param)


def parse_completion_request(body: object, tokenizer: Any = None) -> GenerationRequest:
    fields = _object(body)
    check_parameters("completion", fields)
    if "prompt" not in fields:
        raise errors.missing_parameter("prompt")
    prompt = fields["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise errors.invalid_type("prompt", "a string (or an array of one string)", prompt)
    return _request("completion", fields, {"prompt": prompt})


def check_prompt_fits(request: GenerationRequest, ctx_size: int, longest_token: int | None) -> None:
    """Refuse a prompt that cannot fit in a slot's ``ctx_size`` tokens before llama.cpp sees it.

    llama.cpp tokenizes a prompt whole before it compares it with the context, and that cannot be
    stopped: splitting out special tokens takes time that grows with the square of their count
    (each message adds two; ``<|im_end|>`` written in a text counts too). An 8 MiB body held a
    slot and a core for 23 minutes, after its client had gone. A prompt takes at least a token
    per message and a token per ``longest_token`` bytes of its text, so past either bound it is
    refused here, as llama.cpp would refuse it later; a text that is not UTF-8 (a lone
    surrogate, ``"\\ud800"``) is refused too, which llama.cpp could not take at all."""
    body = request.engine_body
    texts = [m["content"] for m in body["messages"]] if "messages" in body else [body["prompt"]]
    try:
        size = sum(len(text.encode()) for text in texts)
        json.dumps(body, ensure_ascii=False).encode()  # the stop strings, the tools' text: all of it
    except UnicodeEncodeError:
        raise errors.OpenAIError("The request's text must be valid Unicode: it holds a lone UTF-16 surrogate "
                                 "(such as \"\\ud800\").") from None
    at_least = max(len(texts) if "messages" in body else 0, -(-size // longest_token) if longest_token else 0)
    if at_least > ctx_size:
        raise errors.OpenAIError(
            f"This model's maximum context length is {ctx_size} tokens. However, your "
            f"{'messages' if 'messages' in body else 'prompt'} take at least {at_least} tokens.",
            param="messages" if "messages" in body else "prompt",
            code="context_length_exceeded",
        )


def requested_model(body: object) -> str | None:
    """The ``model`` a body names, if it names one as a string (checked before the rest)."""
    if isinstance(body, dict):
        model = body.get("model")
        if isinstance(model, str):
            return model
    return None


def _request(
    kind: Kind,
    fields: dict[str, Any],
    engine_body: dict[str, Any],
    tool_use: ToolUse | None = None,
    constraint_param: str | None = None,
) -> GenerationRequest:
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
        for key, value in options.items():
            if key == "include_obfuscation":
                if value:  # padding fields against length side channels: not sent here
                    raise errors.unsupported_parameter("stream_options.include_obfuscation")
            elif key != "include_usage":
                raise errors.unknown_parameter(f"stream_options.{key}")
        include_usage = (
            _optional_bool(options, "include_usage", "stream_options.include_usage") or False
        )

    n = fields.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise errors.invalid_value("n", "only n=1 is supported by this server.")

    max_tokens = _optional_int(fields, "max_tokens", minimum=1, maximum=_MAX_TOKENS)
    max_completion_tokens = _optional_int(
        fields, "max_completion_tokens", minimum=1, maximum=_MAX_TOKENS
    )
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
        # llama.cpp takes a 32-bit seed, and its all-ones value means "random": any integer is
        # folded into that range (never passed on as it is: past 64 bits it is a TypeError).
        engine_body["seed"] = seed % 0xFFFFFFFF

    stop = _stop(fields.get("stop"))
    if stop:
        engine_body["stop"] = stop

    engine_body["stream"] = True
    engine_body["stream_options"] = {"include_usage": True}
    return GenerationRequest(
        kind=kind,
        model=model,
        stream=stream,
        include_usage=include_usage,
        engine_body=engine_body,
        tool_use=tool_use,
        constraint_param=constraint_param,
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
    call_ids: set[str] = set()  # of the calls the latest assistant message made
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
        for key in message:
            if key not in _MESSAGE_KEYS[role]:
                raise errors.unknown_parameter(f"{where}.{key}")
        if message.get("audio") is not None:
            raise errors.unsupported_parameter(f"{where}.audio")
        content = _content(message.get("content"), f"{where}.content", role)
        if role == "assistant":
            calls = _tool_calls(message.get("tool_calls"), f"{where}.tool_calls")
            call_ids = {call_id for call_id, _ in calls}
            # The model sees its earlier calls as it was asked to write them.
            content = "\n".join(filter(None, [content, *(text for _, text in calls)]))
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if call_id is None:
                raise errors.missing_parameter(f"{where}.tool_call_id")
            if not isinstance(call_id, str):
                raise errors.invalid_type(f"{where}.tool_call_id", "a string", call_id)
            if call_id not in call_ids:
                raise errors.invalid_value(
                    f"{where}.tool_call_id",
                    "a 'tool' message must answer a call in the assistant message before it.",
                )
        # Small chat templates know only system/user/assistant; OpenAI's newer "developer"
        # role means the same as "system".
        messages.append({"role": "system" if role == "developer" else role, "content": content})
    return messages


def _tool_calls(value: object, where: str) -> list[tuple[str, str]]:
    """(id, the call as the model writes it) of each call an assistant message made."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise errors.invalid_type(where, "an array", value)
    calls: list[tuple[str, str]] = []
    for index, call in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(call, dict):
            raise errors.invalid_type(at, "an object", call)
        call_id, function = call.get("id"), call.get("function")
        if not isinstance(call_id, str):
            raise errors.invalid_type(f"{at}.id", "a string", call_id)
        if call.get("type", "function") != "function":
            raise errors.invalid_value(f"{at}.type", "only 'function' calls are supported.")
        if not isinstance(function, dict):
            raise errors.invalid_type(f"{at}.function", "an object", function)
        name, arguments = function.get("name"), function.get("arguments")
        if not isinstance(name, str):
            raise errors.invalid_type(f"{at}.function.name", "a string", name)
        if not isinstance(arguments, str):
            raise errors.invalid_type(f"{at}.function.arguments", "a string", arguments)
        calls.append((call_id, call_text(name, arguments)))
    return calls


def _add_system_text(messages: list[dict[str, str]], text: str) -> None:
    # One system message: some chat templates accept no second one, or only at the start.
    if messages[0]["role"] == "system":
        messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{text}"}
    else:
        messages.insert(0, {"role": "system", "content": text})


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


def _optional_int(
    fields: dict[str, Any], name: str, minimum: int | None = None, maximum: int | None = None
) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise errors.invalid_type(name, "an integer", value)
    if minimum is not None and value < minimum:
        raise errors.invalid_value(name, f"expected a value >= {minimum}, but got {_shown(value)}.")
    if maximum is not None and value > maximum:
        raise errors.invalid_value(name, f"expected a value <= {maximum}, but got {_shown(value)}.")
    return int(value)


def _shown(value: float) -> str:
    """A number as an error message quotes it: a 4000-digit integer is cut short."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:10]}...{text[-10:]} ({len(text)} digits)"


def _optional_number(fields: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise errors.invalid_type(name, "a decimal", value)
    if not low <= value <= high:
        raise errors.invalid_value(
            name, f"expected a value between {low:g} and {high:g}, but got {_shown(value)}."
        )
    return float(value)
