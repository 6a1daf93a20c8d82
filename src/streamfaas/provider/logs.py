"""Per-function log files: every replica's watchdog appends prefixed lines to one file.

A function's output arrives stamped, ``2026-01-02T03:04:05Z NAME[REPLICA] stdout: text``.
Other lines (the watchdog's own, pip's while a venv is built, a traceback) carry no stamp;
OpenFaaS clients decode every line's timestamp as a Go ``time.Time`` and stop at the first
that is not one, so each line is given a time and an instance here, when it is read.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .._log_cut import CUT_MARK

POLL_INTERVAL = 0.1
TAIL_WINDOW = 256 * 1024  # a tail reads this much of the file's end first, then 4× more as needed
FOLLOW_CHUNK = 1 << 20
# The most of a log's end that one request reads (older lines are not shown): a function writes
# its log as it likes, and parsing it costs the gateway ~10× its size in memory.
HISTORY_MAX = 16 << 20


@dataclass(frozen=True, slots=True)
class LogLine:
    time: float  # Unix seconds
    instance: str  # NAME[REPLICA], or the function's name for a line no replica claimed
    text: str


def parse_stamp(token: str) -> float | None:
    """The Unix time of an RFC 3339 token such as ``2026-01-02T03:04:05Z``, else None."""
    if len(token) < 20 or token[10:11] != "T":
        return None
    try:
        t = dt.datetime.fromisoformat(token)
    except ValueError:
        return None
    return None if t.tzinfo is None else t.timestamp()


def _cut_mark(data: bytes) -> int:
    """Where the last line of a watchdog's cut begins (a stamp, then the mark), or -1. A
    function's line holds its replica's prefix after the stamp, so it cannot pass for one."""
    end = len(data)
    while (at := data.rfind(CUT_MARK, 0, end)) >= 0:
        start = data.rfind(b"\n", 0, at) + 1
        if parse_stamp(data[start:at].decode(errors="replace")) is not None:
            return start
        end = at
    return -1


def split_line(line: str) -> tuple[float | None, str, str]:
    """``(time, instance, text)`` of a log line; time None and instance "" where it has none."""
    stamp_token, _, rest = line.partition(" ")
    stamp = parse_stamp(stamp_token)
    if stamp is None:
        return None, "", line
    instance, _, text = rest.partition(" ")
    instance = instance.rstrip(":")
    if instance.endswith("]") and "[" in instance:
        return stamp, instance, text
    return stamp, "", rest


def _read_end(f: BinaryIO, last: int) -> tuple[bytes, int]:
    """The end of file ``f`` that holds its ``last`` lines (all of it if ``last`` < 0), and the
    offset read up to; never more than ``HISTORY_MAX`` bytes of it."""
    size = os.fstat(f.fileno()).st_size
    window = HISTORY_MAX if last < 0 else TAIL_WINDOW
    while True:
        window = min(window, HISTORY_MAX)
        start = max(0, size - window)
        f.seek(start)
        data = f.read(size - start)
        if start == 0 or window == HISTORY_MAX or data.count(b"\n") > last + 1:
            # Past the start of the file, the first line is only a piece of one: not shown.
            return (data if start == 0 else data[data.find(b"\n") + 1 :]), start + len(data)
        window *= 4


def read_history(path: Path, function: str, *, whole: bool, newest: int = -1) -> tuple[list[LogLine], int, bytes]:
    """The lines of ``path`` as ``LogLine``s (its ``newest`` lines or more, all if negative), the
    offset read up to, and the start of a last line still being written, which is left out
    unless ``whole``. A line without a stamp takes the last stamp before it (the first one after
    it for lines at the top, the file's last change if no line has one)."""
    try:
        with open(path, "rb") as f:
            data, end = _read_end(f, newest)
            changed = os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return [], 0, b""
    cut = len(data) if whole else data.rfind(b"\n") + 1
    raw_lines = data[:cut].decode(errors="replace").split("\n")  # not splitlines: pip writes \r
    if raw_lines[-1] == "":
        raw_lines.pop()
    parsed = [split_line(raw) for raw in raw_lines]
    last = next((t for t, _, _ in parsed if t is not None), changed)
    out: list[LogLine] = []
    for stamp, instance, text in parsed:
        if stamp is None:
            stamp = last
        else:
            last = stamp
        out.append(LogLine(stamp, instance or function, text))
    return out, end, data[cut:]


async def follow_log(
    path: Path,
    function: str,
    *,
    tail: int,
    since: float | None,
    follow: bool,
    alive: Callable[[], bool],
) -> AsyncIterator[LogLine]:
    """Yield the last ``tail`` lines (all if negative) at or after ``since``, then, with
    ``follow``, new lines as they are written, until the function goes away."""
    # In a thread (a log may be large), and for a plain tail only the end of the file.
    window = tail if tail >= 0 and since is None else -1
    history, position, partial = await asyncio.to_thread(read_history, path, function, whole=not follow, newest=window)
    if since is not None:
        history = [ln for ln in history if ln.time >= since]
    for line in deque(history, maxlen=tail) if tail >= 0 else history:
        yield line
    if not follow:
        return
    while alive():
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < position:
                    # Cut back (a log past its limit keeps its end, watchdog/function_process.py):
                    # what was kept was read already; go on after the line that says so.
                    kept = f.read(size)
                    at = _cut_mark(kept)
                    if at < 0:  # being rewritten (the cut truncates, then writes): look again
                        await asyncio.sleep(POLL_INTERVAL)
                        continue
                    position, partial = kept.find(b"\n", at) + 1, b""
                f.seek(position)
                chunk = f.read(FOLLOW_CHUNK)  # a fast writer is caught up with a piece at a time
                position = f.tell()
        except FileNotFoundError:
            chunk = b""
        if not chunk:
            await asyncio.sleep(POLL_INTERVAL)
            continue
        partial += chunk
        *complete, partial = partial.split(b"\n")
        now = time.time()  # a line without a stamp was written since the last read: about now
        for raw in complete:
            stamp, instance, text = split_line(raw.decode(errors="replace"))
            line = LogLine(stamp if stamp is not None else now, instance or function, text)
            if since is None or line.time >= since:
                yield line
