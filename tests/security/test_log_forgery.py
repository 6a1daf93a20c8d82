"""A function writes its own log, and an admin reads it in a terminal: what it writes must not
pass for the platform's lines or another replica's, nor act on that terminal, nor stall the
gateway that serves it."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from streamfaas.cli._text import printable
from streamfaas.provider import logs
from streamfaas.provider.logs import TAIL_WINDOW, follow_log, read_history, split_line
from streamfaas.watchdog.function_process import pump_output

FORGED = b"2026-01-02T03:04:05Z otherfn[r9] streamfaas: replica exited with code 0\n"


def test_a_piece_of_an_over_long_line_cannot_start_a_line_of_its_own(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    async def pump() -> None:
        reader = asyncio.StreamReader(limit=65536)
        reader.feed_data(b"A" * 70000 + b"x\n" + FORGED + b"ordinary\n")
        reader.feed_eof()
        await pump_output(reader, b"fn[r1] stdout: ")

    asyncio.run(pump())
    lines = capfdbinary.readouterr().out.decode().splitlines()
    assert len(lines) >= 2  # (asyncio's reader drops the over-long line itself)
    for line in lines:  # every line is the watchdog's stamp and this replica's prefix
        _, instance, text = split_line(line)
        assert instance == "fn[r1]" and text.startswith("stdout: "), line[:120]
    assert any(line.endswith("stdout: " + FORGED.decode().strip()) for line in lines)


def test_control_characters_reach_the_terminal_escaped() -> None:
    hostile = "ok \x1b]52;c;aGk=\x07 \x1b[2J\rfake \x9b1m\x7f\ttab"
    shown = printable(hostile)
    assert not any(ord(c) < 0x20 and c != "\t" or 0x7F <= ord(c) < 0xA0 for c in shown)
    assert shown == "ok \\x1b]52;c;aGk=\\x07 \\x1b[2J\\x0dfake \\x9b1m\\x7f\ttab"
    assert printable("plain text, ünïcode ✓") == "plain text, ünïcode ✓"


def test_a_tail_reads_only_the_end_of_a_large_log(tmp_path: Path) -> None:
    log = tmp_path / "fn.log"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(log, "w") as f:
        for i in range(200_000):  # ≈ 8 MB
            f.write(f"{stamp} fn[r1] stdout: line {i}\n")
    lines, end, partial = read_history(log, "fn", whole=True, newest=3)
    assert len(lines) * 40 <= TAIL_WINDOW  # the file's end, not all 200,000 lines
    assert [ln.text for ln in lines[-3:]] == ["stdout: line 199997", "stdout: line 199998", "stdout: line 199999"]
    assert end == log.stat().st_size and partial == b""

    async def tail(n: int) -> list[str]:
        return [line.text async for line in follow_log(log, "fn", tail=n, since=None, follow=False, alive=lambda: False)]

    assert asyncio.run(tail(3)) == ["stdout: line 199997", "stdout: line 199998", "stdout: line 199999"]
    every = asyncio.run(tail(-1))
    assert len(every) == 200_000 and every[0] == "stdout: line 0"
    deep = asyncio.run(tail(50_000))  # more than the first window holds: it grows until it does
    assert len(deep) == 50_000 and deep[0] == "stdout: line 150000"


def test_a_whole_log_is_read_only_up_to_its_last_history_max_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A function writes its log as it likes; reading all of a 1 GiB one cost the gateway 10 GiB.
    monkeypatch.setattr(logs, "HISTORY_MAX", 1 << 20)
    log = tmp_path / "fn.log"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(log, "w") as f:
        for i in range(100_000):  # ≈ 4 MB
            f.write(f"{stamp} fn[r1] stdout: line {i}\n")
    for newest in (-1, 90_000):
        lines, end, _ = read_history(log, "fn", whole=True, newest=newest)
        assert end == log.stat().st_size
        assert sum(len(f"{stamp} fn[r1] {ln.text}\n") for ln in lines) <= 1 << 20
        assert lines[-1].text == "stdout: line 99999" and lines[0].text.startswith("stdout: line ")  # whole lines only


def test_a_log_past_its_limit_is_cut_to_its_last_lines(tmp_path: Path) -> None:
    # A function writes its log as it likes: one request wrote 1.9 GiB in 10 s to the disk the
    # queue and the images share. Past LOG_MAX the file keeps its last LOG_KEEP bytes.
    from streamfaas.watchdog.function_process import bound_log

    log = tmp_path / "fn.log"
    line = b"2026-01-02T03:04:05Z fn[1] stdout: " + b"x" * 64 + b"\n"
    with open(log, "ab") as f:
        f.write(line * 2000)  # ~200 KB
        fd = f.fileno()
        assert not bound_log(fd, most=1 << 20, keep=64 << 10)  # under the limit: untouched
        f.write(line * 20000)  # ~2 MB
        f.flush()
        assert bound_log(fd, most=1 << 20, keep=64 << 10)
        f.write(line)  # appending goes on after the cut
    data = log.read_bytes()
    assert len(data) <= (64 << 10) + 200
    lines = data.split(b"\n")
    assert lines[0] == line[:-1]  # whole lines only
    assert b"the log passed 1048576 bytes: older lines were dropped" in lines[-3]
    assert data.endswith(line)
    r, w = os.pipe()  # a pipe (kubelet's, on Kubernetes) is never cut
    try:
        assert not bound_log(w, most=0, keep=0)
    finally:
        os.close(r)
        os.close(w)


def test_the_log_is_checked_for_all_of_a_watchdogs_output_not_per_process(
        capfdbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    # In the forking modes each request's process has its own pump: a counter per pump never
    # reached the check when every process wrote a little less than it.
    from streamfaas.watchdog import function_process

    checks: list[int] = []
    monkeypatch.setattr(function_process, "LOG_CHECK", 1000)
    monkeypatch.setattr(function_process, "_written", 0)
    monkeypatch.setattr(function_process, "bound_log", lambda fd: checks.append(fd) or False)

    async def one_process() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"y" * 600 + b"\n")  # under LOG_CHECK, alone
        reader.feed_eof()
        await pump_output(reader, b"fn[r1] stderr: ")

    for _ in range(4):
        asyncio.run(one_process())
    capfdbinary.readouterr()
    assert len(checks) == 2  # 4 × ~640 bytes: checked twice


def test_a_follower_goes_on_after_the_log_was_cut(tmp_path: Path) -> None:
    from streamfaas.watchdog.function_process import bound_log

    log = tmp_path / "fn.log"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    log.write_text("".join(f"{stamp} fn[r1] stdout: old {i}\n" for i in range(1000)))

    async def follow() -> list[str]:
        seen: list[str] = []
        caught_up, done = asyncio.Event(), asyncio.Event()

        async def read() -> None:
            async for line in follow_log(log, "fn", tail=-1, since=None, follow=True, alive=lambda: not done.is_set()):
                seen.append(line.text)
                if len(seen) == 2000:
                    caught_up.set()
                if line.text == "stdout: after the cut":
                    done.set()

        task = asyncio.create_task(read())
        with open(log, "ab") as f:  # as the watchdog does past its limit: keep the end, say so, go on
            for i in range(1000, 2000):
                f.write(f"{stamp} fn[r1] stdout: old {i}\n".encode())
            f.flush()
            await asyncio.wait_for(caught_up.wait(), 10)  # the follower has read them all
            assert bound_log(f.fileno(), most=1000, keep=200)
            f.write(f"{stamp} fn[r1] stdout: after the cut\n".encode())
        await asyncio.wait_for(done.wait(), 10)
        await task
        return seen

    seen = asyncio.run(follow())
    assert seen[-1] == "stdout: after the cut"
    assert len(seen) == 2000 + 1  # every line before the cut, then the new one: none twice
