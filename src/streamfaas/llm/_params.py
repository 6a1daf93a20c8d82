"""Which request parameters this server implements, accepts without effect, or refuses.

No parameter is silently dropped: a client that asks for log probabilities or audio must learn
that it will not get them, so anything not implemented is refused with OpenAI's error JSON naming
it. The exceptions (``IGNORED``) change nothing about the answer a client gets back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import _errors as errors

if TYPE_CHECKING:
    from ._requests import Kind

IMPLEMENTED: Mapping[Kind, frozenset[str]] = {
    "chat": frozenset(
        {
            "model",
            "messages",
            "stream",
            "stream_options",
            "n",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
            "seed",
            "stop",
            "response_format",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
        }
    ),
    "completion": frozenset(
        {
            "model",
            "prompt",
            "stream",
            "stream_options",
            "n",
            "max_tokens",
            "temperature",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
            "seed",
            "stop",
        }
    ),
}

# Accepted and without effect: end-user ids and stored-completion bookkeeping (this server keeps
# nothing), and a prompt-cache hint (llama.cpp reuses a slot's cached prefix by itself).
IGNORED: Mapping[Kind, frozenset[str]] = {
    "chat": frozenset({"user", "safety_identifier", "store", "metadata", "prompt_cache_key"}),
    "completion": frozenset({"user"}),
}

# Known to OpenAI's API and not implemented here. A value equal to the parameter's default asks
# for nothing this server lacks, so it passes (SDKs and frameworks sometimes send defaults).
_CHAT_UNSUPPORTED: dict[str, tuple[object, ...]] = {
    "logprobs": (False,),
    "top_logprobs": (),
    "logit_bias": ({},),
    "audio": (),
    "modalities": (["text"],),
    "prediction": (),
    "reasoning_effort": (),
    "verbosity": (),
    "web_search_options": (),
    "service_tier": ("auto", "default"),
    "functions": (),
    "function_call": (),
}
_COMPLETION_UNSUPPORTED: dict[str, tuple[object, ...]] = {
    "logprobs": (),
    "logit_bias": ({},),
    "echo": (False,),
    "best_of": (1,),
    "suffix": (),
}
UNSUPPORTED: Mapping[Kind, Mapping[str, tuple[object, ...]]] = {
    "chat": _CHAT_UNSUPPORTED,
    "completion": _COMPLETION_UNSUPPORTED,
}

_HINTS = {
    "functions": " Use 'tools' instead.",
    "function_call": " Use 'tool_choice' instead.",
}


def check_parameters(kind: Kind, fields: Mapping[str, Any]) -> None:
    """Refuse the first parameter this server would otherwise have to ignore."""
    implemented = IMPLEMENTED[kind]
    ignored = IGNORED[kind]
    unsupported = UNSUPPORTED[kind]
    for name, value in fields.items():
        if name in implemented or name in ignored:
            continue
        if name in unsupported:
            if value is None or _is_default(value, unsupported[name]):
                continue
            raise errors.unsupported_parameter(name, _HINTS.get(name, ""))
        raise errors.unknown_parameter(name)


def _is_default(value: object, defaults: tuple[object, ...]) -> bool:
    # `False == 0` in Python; a default of False must not admit 0, nor 1 admit True.
    return any(type(value) is type(default) and value == default for default in defaults)
