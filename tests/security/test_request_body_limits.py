"""Request bodies are held to the function's max_body and read_timeout at the gateway."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from platform_fixture import Platform

MiB = 1024 * 1024

BODY_SIZE = """
def handle(req):
    return str(len(req))
"""


@pytest.fixture(scope="module")
def functions(shared_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Platform:
    root = tmp_path_factory.mktemp("functions")
    deploy = [
        ("buffered", {"buffer_body": "true", "RAW_BODY": "true"}),  # default max_body: 10 MiB
        ("buffered-1s", {"buffer_body": "true", "read_timeout": "1s", "RAW_BODY": "true"}),
        ("streamed-1mib", {"max_body": "1MiB", "RAW_BODY": "true"}),
        ("streamed-1s", {"read_timeout": "1s", "RAW_BODY": "true"}),
    ]
    for name, env in deploy:
        handler = shared_platform.write_function(root, name, BODY_SIZE)
        shared_platform.deploy(name, handler, env=env, wait=False)
    for name, _ in deploy:
        shared_platform.wait_ready(name)
    return shared_platform


class _Exchange:
    """One request over a raw socket: the body goes out from a thread while the answer is read,
    so a server that answers early (and stops reading) is seen answering."""

    def __init__(self, url: str, head: bytes, body: Iterator[bytes]) -> None:
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
        self.sock.sendall(head)
        self.sent = 0
        self.answered = threading.Event()
        self._body = body
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._sender.start()

    def _send(self) -> None:
        try:
            for chunk in self._body:
                if self.answered.is_set():
                    return
                self.sock.sendall(chunk)
                self.sent += len(chunk)
        except OSError:
            pass  # the server closed the connection after answering

    def answer(self, timeout: float) -> tuple[int, bytes]:
        """The status and the body (sized by its Content-Length) of the answer."""
        self.sock.settimeout(timeout)
        reply = b""
        try:
            while b"\r\n\r\n" not in reply:
                chunk = self.sock.recv(65536)
                assert chunk, f"closed without an answer: {reply!r}"
                reply += chunk
            head, _, payload = reply.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            fields = dict(line.lower().split(": ", 1) for line in lines[1:])
            while len(payload) < int(fields["content-length"]):
                chunk = self.sock.recv(65536)
                assert chunk, f"closed mid-answer: {reply!r}"
                payload += chunk
        finally:
            self.answered.set()
        return int(lines[0].split()[1]), payload

    def close(self) -> None:
        self.answered.set()
        self.sock.close()
        self._sender.join(30)


def _head(url: str, *, length: int | None) -> bytes:
    parts = urlsplit(url)
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{framing}\r\n\r\n".encode()


def _plain(size: int, chunk: int = MiB) -> Iterator[bytes]:
    block = b"x" * chunk
    for _ in range(size // chunk):
        yield block


def _chunked(size: int, chunk: int = MiB) -> Iterator[bytes]:
    block = f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n"
    for _ in range(size // chunk):
        yield block
    yield b"0\r\n\r\n"


def _rss_peak_reset(pid: int) -> int:
    """The process's resident memory now, in bytes, after resetting its peak (VmHWM) to it."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kib(pid, "VmRSS") * 1024


def _rss_peak(pid: int) -> int:
    return _status_kib(pid, "VmHWM") * 1024


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_huge_buffered_body_gets_413_without_memory_growth(functions: Platform, framing: str) -> None:
    assert functions.proc is not None
    pid = functions.proc.pid
    size = 400 * MiB
    url = functions.function_url("buffered")
    before = _rss_peak_reset(pid)
    if framing == "content-length":
        exchange = _Exchange(url, _head(url, length=size), _plain(size))
    else:
        exchange = _Exchange(url, _head(url, length=None), _chunked(size))
    try:
        status, message = exchange.answer(timeout=30)
    finally:
        exchange.close()
    assert status == 413
    assert message == f"request body is larger than buffered's max_body of {10 * MiB} bytes\n".encode()
    growth = _rss_peak(pid) - before
    assert growth < 50 * MiB, f"the gateway grew by {growth / MiB:.0f} MiB"
    # A body of max_body itself still goes through.
    exchange = _Exchange(url, _head(url, length=None), _chunked(10 * MiB))
    try:
        assert exchange.answer(timeout=30) == (200, str(10 * MiB).encode())
    finally:
        exchange.close()


def _stalled() -> Iterator[bytes]:
    yield b"only the start of the body"


def _trickled() -> Iterator[bytes]:
    for _ in range(100):
        yield b"x"
        time.sleep(0.1)  # a client that sends a byte now and then, never the whole body


@pytest.mark.parametrize("route", ["/function/", "/async-function/"])
@pytest.mark.parametrize("body", [_stalled, _trickled], ids=["stalled", "trickled"])
def test_slow_buffered_body_gets_408_within_read_timeout(functions: Platform, body: object, route: str) -> None:
    # An async body is read whole before it is queued: held to the function's read_timeout too,
    # or an anonymous caller could park a MiB in the gateway's memory per connection, for ever.
    url = f"{functions.url}{route}buffered-1s"
    started = time.monotonic()
    exchange = _Exchange(url, _head(url, length=MiB), body())  # type: ignore[operator]
    try:
        status, message = exchange.answer(timeout=20)
    finally:
        exchange.close()
    assert status == 408
    assert message == b"request body not received within 1s (buffered-1s's read_timeout)\n"
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_withheld_streamed_body_is_given_up_after_read_timeout(functions: Platform, framing: str) -> None:
    # Streamed on as it comes, a body that never came held the replica (a waitress thread; a
    # process per request in the forking modes) until upstream_timeout, 10 min: a few idle
    # sockets made a function unavailable to everyone.
    url = functions.function_url("streamed-1s")
    started = time.monotonic()
    body = iter([b"5\r\nhello\r\n"]) if framing == "chunked" else _stalled()
    exchange = _Exchange(url, _head(url, length=None if framing == "chunked" else MiB), body)
    try:
        status, message = exchange.answer(timeout=20)
    finally:
        exchange.close()
    assert status == 408
    assert message == b"request body stalled: nothing of it for 1s (read_timeout)\n"
    assert time.monotonic() - started < 5
    r = functions.http.post(url, content=b"after")  # the replica is free again
    assert (r.status_code, r.text) == (200, "5")


def test_huge_streamed_body_gets_413_by_its_length_and_never_piles_up(functions: Platform) -> None:
    url = functions.function_url("streamed-1mib")
    exchange = _Exchange(url, _head(url, length=64 * MiB), _plain(64 * MiB))
    try:
        status, message = exchange.answer(timeout=30)
    finally:
        exchange.close()
    assert status == 413, message
    assert exchange.sent < 16 * MiB  # refused before it was read
    # Without a Content-Length, a streamed body is passed on as it comes (max_body cannot apply
    # before the end), with back-pressure: it never piles up in the gateway.
    assert functions.proc is not None
    pid = functions.proc.pid
    before = _rss_peak_reset(pid)
    exchange = _Exchange(url, _head(url, length=None), _chunked(64 * MiB))
    try:
        assert exchange.answer(timeout=60) == (200, str(64 * MiB).encode())
    finally:
        exchange.close()
    growth = _rss_peak(pid) - before
    assert growth < 50 * MiB, f"the gateway grew by {growth / MiB:.0f} MiB"


@pytest.mark.parametrize("name", ["buffered", "streamed-1mib"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_compressed_body_passes_on_as_sent(functions: Platform, name: str, framing: str) -> None:
    # Decompressed by the gateway's server, the body no longer matched the Content-Length and
    # Content-Encoding it was forwarded with: the watchdog read another framing than the one
    # sent (the call hung until upstream_timeout), a request-smuggling shape.
    import gzip

    compressed = gzip.compress(b"a" * 100_000)
    content = compressed if framing == "content-length" else iter([compressed[:50], compressed[50:]])
    r = functions.http.post(functions.function_url(name), content=content,
                            headers={"Content-Encoding": "gzip"}, timeout=15)
    assert (r.status_code, r.text) == (200, str(len(compressed)))
