"""What a watchdog tells the process that started it (the local provider) about its start.

The provider passes a pipe's write end as ``STREAMFAAS_READY_FD``. The watchdog writes ``1``
once its function serves, or ``0`` and then why it could not start: its own reason on the
first line, then the end of the function's traceback (file, line, exception), which the
provider shows at deploy time and in a crash-looping function's 503. End of file with
nothing written means the watchdog died without a word. Only the standard library is used
here: ``main`` reports settings errors before anything heavy is imported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

READY = b"1"
FAILED = b"0"
REPORT_LIMIT = 4096  # bytes after the first
TAIL_LINES = 40  # stderr lines a watchdog keeps, to find a traceback's end in
_LINE_LIMIT = 300  # characters of one line
_FRAME = re.compile(r'\s*File "[^"]*", line \d+')
_PLAIN_TAIL = 5  # lines reported when the output holds no traceback


def traceback_tail(lines: Iterable[bytes], root: str = "") -> list[str]:
    """The end of the last traceback in a process's output: its last frame (file and line),
    the source line, and the exception; or, without a traceback, the last few lines. Files
    under ``root`` (the function's image) are named relative to it: ``function/handler.py``."""
    prefix = f'File "{root.rstrip("/")}/' if root else ""
    text = []
    for raw in lines:
        line = raw.decode(errors="replace").rstrip()
        if prefix:
            line = line.replace(prefix, 'File "', 1)
        text.append(line[:_LINE_LIMIT])
    while text and not text[-1].strip():
        text.pop()
    frames = [i for i, line in enumerate(text) if _FRAME.match(line)]
    return text[frames[-1]:] if frames else text[-_PLAIN_TAIL:]


def report_failure(fd: int | None, reason: str, output: Iterable[bytes] = ()) -> None:
    """Write the failure report to the ready pipe and close it (the provider then knows at
    once, before this process has finished stopping). The watchdog runs in the function's
    image, so its working directory is the root that file names are shortened against."""
    if fd is None:
        return
    text = "\n".join([reason, *traceback_tail(output, os.getcwd())]).encode()[:REPORT_LIMIT]
    try:
        os.write(fd, FAILED + text)
    except OSError:
        pass
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
