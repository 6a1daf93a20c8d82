"""Structured output and tool calls: what the model may write, as a grammar llama.cpp enforces.

The bundled model's chat template knows nothing of tools, so tools are described in a system
message and every call is constrained to ``{"name":"<tool>","arguments":<its schema>}``. The
grammar is in llguidance's Lark dialect (xllamacpp's llama.cpp is built with llguidance), whose
``%json`` embeds a JSON schema: each tool's arguments and the answer's schema stay whole
documents, so their ``$ref``s keep pointing where they did.

llama.cpp drops a grammar llguidance cannot compile without a word and generates unconstrained
text, so each grammar is compiled here first: a schema it cannot handle is the client's 400.
Some grammars compile and fail only once tokens are matched (a lexer or parser limit: a string
of exactly 4000 characters, fifty alternative objects), and llama.cpp then goes on unconstrained
too; so, with the model's vocabulary (``_vocab``), the first few tokens are matched here as well,
and each answer is matched against its grammar once generated (``output_problem``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import _errors as errors

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Compact JSON: a model allowed free whitespace can pad an answer with newlines until
# max_tokens runs out (SmolLM2 does), and OpenAI's own output is compact too.
_COMPACT = {"whitespace_flexible": False}
# In "auto" mode an answer in text must not start like a call; anything else goes.
_TEXT_ANSWER = r"/[^{\s][\s\S]*/"


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolUse:
    """The tools a request offers: ``callable`` are those a call may name (all of them, or the
    one that ``tool_choice`` names); ``required`` false lets the model answer instead."""

    tools: tuple[Tool, ...]
    callable: tuple[Tool, ...]
    required: bool

    def call_heads(self) -> dict[str, str]:
        """What a call's text starts with, for each tool it may name."""
        return {call_head(tool.name): tool.name for tool in self.callable}


def call_head(name: str) -> str:
    return '{"name":' + json.dumps(name) + ',"arguments":'


def parse_response_format(value: object) -> dict[str, Any] | None:
    """The JSON schema the answer must match, or None for free text."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise errors.invalid_type("response_format", "an object", value)
    kind = value.get("type")
    if kind is None:
        raise errors.missing_parameter("response_format.type")
    _known_keys(
        value, "response_format", {"type", "json_schema"} if kind == "json_schema" else {"type"}
    )
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise errors.invalid_value(
            "response_format.type",
            f"{kind!r} is not one of 'text', 'json_object', 'json_schema'.",
        )
    spec = value.get("json_schema")
    where = "response_format.json_schema"
    if spec is None:
        raise errors.missing_parameter(where)
    if not isinstance(spec, dict):
        raise errors.invalid_type(where, "an object", spec)
    _known_keys(spec, where, {"name", "description", "schema", "strict"})
    _name(spec.get("name"), f"{where}.name")
    _optional(spec, "description", str, f"{where}.description", "a string")
    _optional(spec, "strict", bool, f"{where}.strict", "a boolean")
    # Strict or not, the schema is enforced: a grammar costs this server nothing extra.
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise errors.invalid_type(f"{where}.schema", "an object", schema)
    return schema


def parse_tools(fields: Mapping[str, Any]) -> ToolUse | None:
    """The tools the model may call, or None when it may not call any."""
    value = fields.get("tools")
    choice = fields.get("tool_choice")
    parallel = fields.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise errors.invalid_type("parallel_tool_calls", "a boolean", parallel)
    if value is None:
        for name, given in (("tool_choice", choice), ("parallel_tool_calls", parallel)):
            if given is not None:
                raise errors.invalid_value(
                    name, f"'{name}' is only allowed when 'tools' are specified."
                )
        return None
    tools = _tools(value)
    if choice is None or choice == "auto":
        return ToolUse(tools, tools, required=False)
    if choice == "none":
        return None
    if choice == "required":
        return ToolUse(tools, tools, required=True)
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if not isinstance(function, dict):
            raise errors.invalid_type("tool_choice.function", "an object", function)
        wanted = function.get("name")
        if not isinstance(wanted, str):
            raise errors.invalid_type("tool_choice.function.name", "a string", wanted)
        named = tuple(tool for tool in tools if tool.name == wanted)
        if not named:
            raise errors.invalid_value(
                "tool_choice.function.name", f"no function named {wanted!r} is in 'tools'."
            )
        return ToolUse(tools, named, required=True)
    raise errors.invalid_value(
        "tool_choice",
        "expected 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": "
        '{"name": ...}}.',
    )


MAX_TOOLS = 128


def _tools(value: object) -> tuple[Tool, ...]:
    if not isinstance(value, list):
        raise errors.invalid_type("tools", "an array", value)
    if not value:
        raise errors.invalid_value("tools", "expected an array with at least one tool.")
    if len(value) > MAX_TOOLS:
        # OpenAI's own limit. Each tool's grammar is compiled: thousands took the server 20 s.
        raise errors.invalid_value("tools", f"expected an array of at most {MAX_TOOLS} tools, got {len(value)}.")
    tools: list[Tool] = []
    for index, item in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(item, dict):
            raise errors.invalid_type(where, "an object", item)
        if item.get("type") != "function":
            raise errors.invalid_value(
                f"{where}.type", "only 'function' tools are supported by this server."
            )
        _known_keys(item, where, {"type", "function"})
        function = item.get("function")
        if function is None:
            raise errors.missing_parameter(f"{where}.function")
        if not isinstance(function, dict):
            raise errors.invalid_type(f"{where}.function", "an object", function)
        where = f"{where}.function"
        _known_keys(function, where, {"name", "description", "parameters", "strict"})
        name = _name(function.get("name"), f"{where}.name")
        if any(tool.name == name for tool in tools):
            raise errors.invalid_value(
                f"{where}.name", f"the function name {name!r} is used twice."
            )
        description = _optional(function, "description", str, f"{where}.description", "a string")
        _optional(function, "strict", bool, f"{where}.strict", "a boolean")
        # OpenAI: leaving out the parameters defines a function that takes none.
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}, "additionalProperties": False}
        if not isinstance(parameters, dict):
            raise errors.invalid_type(f"{where}.parameters", "an object", parameters)
        tools.append(Tool(name, description or "", parameters))
    return tuple(tools)


def grammar(
    answer_schema: dict[str, Any] | None, tool_use: ToolUse | None, tokenizer: Any = None
) -> str | None:
    """The grammar of what the model may write (None: anything), checked to compile and, with
    the model's ``tokenizer`` (llguidance's), to match its first tokens."""
    if tool_use is None:
        if answer_schema is None:
            return None
        text = "%llguidance {}\nstart: " + _json_rule(answer_schema) + "\n"
        _check(text, "response_format.json_schema.schema", tokenizer)
        return text
    lines = ["%llguidance {}"]
    branches: list[str] = []
    for index, tool in enumerate(tool_use.callable):
        # The arguments alone first, so that an error names the tool it is about.
        position = tool_use.tools.index(tool)
        _check(
            "%llguidance {}\nstart: " + _json_rule(tool.parameters) + "\n",
            f"tools[{position}].function.parameters",
            tokenizer,
        )
        branches.append(f"call_{index}")
        lines.append(f'call_{index}: {json.dumps(call_head(tool.name))} args_{index} "}}"')
        lines.append(f"args_{index}: {_json_rule(tool.parameters)}")
    if not tool_use.required:
        branches.append("answer")
        if answer_schema is None:
            lines.append(f"answer: {_TEXT_ANSWER}")
        else:
            _check(
                "%llguidance {}\nstart: " + _json_rule(answer_schema) + "\n",
                "response_format.json_schema.schema",
                tokenizer,
            )
            lines.append(f"answer: {_json_rule(answer_schema)}")
    lines.insert(1, "start: " + " | ".join(branches))
    text = "\n".join(lines) + "\n"
    _check(text, "tools", tokenizer)
    return text


def tool_prompt(tool_use: ToolUse, answer_is_json: bool) -> str:
    """The system text that tells the model which tools there are and how to call one."""
    described = "\n".join(
        json.dumps(
            {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
            ensure_ascii=False,
        )
        for tool in tool_use.tools
    )
    if not tool_use.required:
        then = "Call a tool only when it helps; otherwise answer " + (
            "with JSON." if answer_is_json else "in plain text."
        )
    elif len(tool_use.callable) < len(tool_use.tools):
        then = f"Reply with a call to the tool {tool_use.callable[0].name}."
    else:
        then = "Reply with a call to one of the tools."
    return (
        "You can call these tools (each with a JSON Schema of its arguments):\n"
        f"{described}\n"
        'To call a tool, reply with only this JSON: {"name":"<tool name>","arguments":{...}}\n'
        + then
    )


def call_text(name: str, arguments: str) -> str:
    """An earlier call, in the form the model is asked to write (arguments compacted when they
    are JSON, as the model's own would be)."""
    try:
        compact = json.dumps(json.loads(arguments), ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        compact = json.dumps(arguments, ensure_ascii=False)
    return call_head(name) + compact + "}"


def _json_rule(schema: dict[str, Any]) -> str:
    schema = _closed(schema)
    if "x-guidance" not in schema:
        schema = {**schema, "x-guidance": _COMPACT}
    return "%json " + json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "contains")


def _closed(schema: Any) -> Any:
    """The schema with every object that lists its properties and says nothing about others
    closed to others. JSON Schema allows extra properties by default, and a small model given
    that freedom invents keys until max_tokens runs out (SmolLM2 does, with LangChain's tool
    schemas); a schema that says ``additionalProperties`` keeps what it says."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _closed(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_closed(sub) for sub in out[key]]
    for key in _SCHEMA_ONE:
        if key in out:
            out[key] = _closed(out[key])
    return out


def _check(text: str, param: str, tokenizer: Any = None) -> None:
    try:
        from llguidance import LLMatcher
    except ImportError:
        raise errors.OpenAIError(
            "Structured output needs the llguidance package: pip install 'streamfaas[llm]'.",
            status=500,
            type="server_error",
        ) from None
    problem = LLMatcher.validate_grammar(text)
    if problem:
        # llguidance's message starts with a position in the grammar text, which the client
        # never saw; the reason follows "failed to compile JSON schema: ".
        reason = problem.split("\n", 1)[0]
        reason = reason.split(": ", 1)[1] if reason.startswith("at ") and ": " in reason else reason
        raise errors.invalid_value(param, f"this server cannot enforce the schema: {reason}")
    if tokenizer is not None:
        failure = _first_tokens_problem(LLMatcher(tokenizer, text, log_level=0), tokenizer.eos_token)
        if failure:
            raise errors.invalid_value(param, f"this server cannot enforce the schema: {failure}")


# How far ahead the first tokens are tried: a few steps along two tokens each (the lowest and the
# highest id the grammar allows, often a short and a long one) and along the forced tokens. The
# limits llguidance hits at generation time (lexer states, parser row size) show within a token
# or two of where the schema's troublesome part starts; a few ms of masks catch those at the start.
_STEPS = 3
_MAX_MASKS = 24


def _first_tokens_problem(matcher: Any, eos: int) -> str | None:
    """llguidance's error on the way through the first tokens of a grammar, or None."""
    frontier = [matcher]
    masks = 0
    for _ in range(_STEPS):
        following: list[Any] = []
        for current in frontier:
            if masks >= _MAX_MASKS:
                return None
            forced = current.compute_ff_tokens()
            mask = int.from_bytes(current.compute_bitmask(), "little") & ~(1 << eos)
            masks += 1
            if current.is_error():
                return _matcher_error(current)
            choices = [forced] if forced else []
            if mask:
                low = (mask & -mask).bit_length() - 1
                choices += [[low], [mask.bit_length() - 1]] if mask != 1 << low else [[low]]
            for tokens in choices:
                step = current.deep_copy()
                step.consume_tokens(tokens)
                if step.is_error():
                    return _matcher_error(step)
                if not step.is_stopped():
                    following.append(step)
        frontier = following
    return None


def output_problem(grammar_text: str, tokenizer: Any, text: str, complete: bool) -> str | None:
    """Why ``text`` is not what ``grammar_text`` allows (None: it is), ``complete`` when the
    text claims to be whole. llama.cpp gives up a grammar that fails during generation with no
    more than a log line, so each constrained answer is checked before it is called a success."""
    from llguidance import LLMatcher

    matcher = LLMatcher(tokenizer, grammar_text, log_level=0)
    # Greedy tokens, not the model's: llguidance matches bytes, however they are split.
    matcher.consume_tokens(tokenizer.greedy_tokenize(text))
    if matcher.is_error():
        return f"the answer does not match it ({_matcher_error(matcher)})"
    if complete and not matcher.is_accepting():
        return "the answer ended before the schema allowed it to"
    return None


def _matcher_error(matcher: Any) -> str:
    # The first line says what; the rest is the matcher's state. Its hint about grammar
    # recursion is about a grammar the client never wrote.
    reason: str = matcher.get_error().split("\n", 1)[0]
    return reason.split("; consider ", 1)[0] or "the grammar engine failed"


def _known_keys(value: Mapping[str, Any], where: str, known: set[str]) -> None:
    for key in value:
        if key not in known:
            raise errors.unknown_parameter(f"{where}.{key}")


def _name(value: object, where: str) -> str:
    if value is None:
        raise errors.missing_parameter(where)
    if not isinstance(value, str):
        raise errors.invalid_type(where, "a string", value)
    if not _NAME.fullmatch(value):
        raise errors.invalid_value(
            where, "expected a name of 1-64 letters, digits, underscores or dashes."
        )
    return value


def _optional(fields: Mapping[str, Any], key: str, kind: type, where: str, expected: str) -> Any:
    value = fields.get(key)
    if value is not None and not isinstance(value, kind):
        raise errors.invalid_type(where, expected, value)
    return value
