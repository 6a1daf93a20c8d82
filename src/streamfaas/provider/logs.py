"""Per-function log files: every replica's watchdog appends prefixed lines to one file."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path

POLL_INTERVAL = 0.1


def line_time(line: str) -> float | None:
    """The Unix time at the start of a log line (``2026-01-02T03:04:05Z …``), if any."""
    stamp = line.split(" ", 1)[0]
    try:
        return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


async def follow_log(
    path: Path,
    *,
    tail: int,
    since: float | None,
    follow: bool,
    alive: Callable[[], bool],
) -> AsyncIterator[str]:
    """Yield the last ``tail`` lines (all if negative) at or after ``since``, then, with
    ``follow``, new lines as they are written, until the function goes away."""
    position = 0
    if path.exists():
        with open(path, "rb") as f:
            data = f.read()
            position = f.tell()
        lines = data.decode(errors="replace").splitlines()
        if since is not None:
            lines = [ln for ln in lines if (t := line_time(ln)) is None or t >= since]
        kept = deque(lines, maxlen=tail) if tail >= 0 else lines
        for line in kept:
            yield line
    if not follow:
        return
    partial = b""
    while alive():
        try:
            with open(path, "rb") as f:
                f.seek(position)
                chunk = f.read()
                position = f.tell()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            partial += chunk
            *complete, partial = partial.split(b"\n")
            for raw in complete:
                yield raw.decode(errors="replace")
        else:
            await asyncio.sleep(POLL_INTERVAL)
