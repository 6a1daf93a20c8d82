"""Reading a tool call out of the text the model streams.

The grammar (``_structured``) makes a call's text exactly ``{"name":"<tool>","arguments":`` +
the arguments + ``}``, and in "auto" mode an answer in text can never start like that. So the
first characters decide between a call and an answer, and a call's arguments can be passed on
as they are generated, holding back only a ``}`` that may turn out to be the call's last.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from ._structured import ToolUse


@dataclass(frozen=True, slots=True)
class Content:
    text: str


@dataclass(frozen=True, slots=True)
class CallStart:
    call_id: str
    name: str


@dataclass(frozen=True, slots=True)
class Arguments:
    text: str


Event = Content | CallStart | Arguments


def new_call_id() -> str:
    return "call_" + secrets.token_urlsafe(18)


class ToolCallReader:
    """Feed it the generated texts in order; it says what each becomes.

    ``call`` is (id, name, arguments) once the text turned out to be a call, ``content`` the
    answer otherwise.
    """

    __slots__ = ("_heads", "_pending", "_mode", "call_id", "name", "arguments", "content")

    def __init__(self, tool_use: ToolUse) -> None:
        self._heads = tool_use.call_heads()
        self._pending = ""
        self._mode = "deciding"
        self.call_id = ""
        self.name = ""
        self.arguments = ""
        self.content = ""

    @property
    def is_call(self) -> bool:
        return self._mode == "call"

    def feed(self, text: str) -> list[Event]:
        if self._mode == "content":
            self.content += text
            return [Content(text)]
        self._pending += text
        if self._mode == "deciding":
            return self._decide()
        return self._arguments(final=False)

    def finish(self) -> list[Event]:
        """The generation ended: what was held back (all of it, if it was cut short)."""
        if self._mode == "call":
            return self._arguments(final=True)
        if self._mode == "deciding" and self._pending:
            # Cut before a call's name was complete: what there is, as text.
            self._mode = "content"
            return self.feed(self._pop())
        return []

    def _decide(self) -> list[Event]:
        pending = self._pending
        for head, name in self._heads.items():
            if pending.startswith(head):
                self._mode = "call"
                self.call_id = new_call_id()
                self.name = name
                self._pending = pending[len(head) :]
                return [CallStart(self.call_id, name), *self._arguments(final=False)]
        if any(head.startswith(pending) for head in self._heads):
            return []  # still a possible call: wait for more
        self._mode = "content"
        return self.feed(self._pop())

    def _arguments(self, *, final: bool) -> list[Event]:
        pending = self._pending
        if final:
            # A complete call ends with the "}" that closes it (the arguments before it then
            # parse); a call cut short by max_tokens keeps everything it has.
            self._pending = ""
            if pending.endswith("}") and _is_json(self.arguments + pending[:-1]):
                pending = pending[:-1]
        elif pending.endswith("}"):
            self._pending = "}"
            pending = pending[:-1]
        else:
            self._pending = ""
        if not pending:
            return []
        self.arguments += pending
        return [Arguments(pending)]

    def _pop(self) -> str:
        pending, self._pending = self._pending, ""
        return pending


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
