"""Text from a gateway, shown on the admin's terminal: a function writes its log, its start
error and its image's name, and a caller chooses a job's call id. Nothing of it may act on the
terminal (clear it, move the cursor over a line's real time, set the clipboard with OSC 52) or
be read as rich's markup (``[/x]`` crashed `queue list`; ``[link=…]`` disguised a link)."""

from __future__ import annotations

from rich.text import Text

# C0 controls but tab, DEL and C1 controls, shown escaped.
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if c != 0x09}


def printable(text: str) -> str:
    return text.translate(_CONTROLS)


def lines_printable(text: str) -> str:
    """``printable``, line breaks kept."""
    return "\n".join(map(printable, text.split("\n")))


def cell(text: object) -> Text:
    """A table cell: plain text, never markup, controls escaped."""
    return Text(printable(str(text)))
