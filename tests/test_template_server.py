"""The templates' waitress server (``streamfaas_serve``): streamed replies keep the connection
alive when the body's end is marked, and close it where it is not."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import streamfaas.templates

COMMON = Path(streamfaas.templates.__file__).parent / "_common"
APP = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from streamfaas_serve import serve_app

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/fail":
            start_response("200 OK", [("Content-Type", "text/plain")])
            def failing():
                yield b"first\\n"
                raise RuntimeError("half-way")
            return failing()
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return iter([b"data: 1\\n\\n", b"data: 2\\n\\n"])  # no length: sent chunked

    serve_app(app)
    """
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """The template's server on a Unix socket handed over as STREAMFAAS_LISTEN_FD, as the
    watchdog hands it; yields the socket's path (it listens already: a request made before
    the server runs waits in the queue)."""
    assert (COMMON / "streamfaas_serve.py").exists()
    path = str(tmp_path / "fn.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    (tmp_path / "app.py").write_text(APP)
    env = {**os.environ, "STREAMFAAS_LISTEN_FD": str(listener.fileno()), "threads": "4"}
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "app.py"), str(COMMON)],
        env=env,
        pass_fds=(listener.fileno(),),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    listener.close()
    try:
        yield path
    finally:
        proc.kill()
        proc.wait(10)


def exchange(conn: socket.socket, request: bytes, end: bytes) -> bytes:
    """Send one request and read until ``end`` (or until the server closes)."""
    conn.sendall(request)
    data = b""
    conn.settimeout(10)
    while not data.endswith(end):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def connect(path: str) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    return conn


def closed_by_server(conn: socket.socket) -> bool:
    """The server ends the connection (within 10 s), after whatever body it still had to send:
    an HTTP/1.0 reply's body is delimited by the close itself, so it may come after the head."""
    conn.settimeout(10)
    try:
        while conn.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


GET = b"GET /stream HTTP/1.1\r\nHost: fn\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def test_streamed_reply_keeps_the_connection_for_the_next_request(server: str) -> None:
    with connect(server) as conn:
        first = exchange(conn, GET, LAST_CHUNK)
        assert b"Transfer-Encoding: chunked" in first and b"data: 2" in first
        assert b"Connection: close" not in first
        second = exchange(conn, GET, LAST_CHUNK)  # same connection
        assert second.startswith(b"HTTP/1.1 200") and second.endswith(LAST_CHUNK)


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /stream HTTP/1.1\r\nHost: fn\r\nConnection: close\r\n\r\n",
        b"GET /stream HTTP/1.0\r\nHost: fn\r\n\r\n",
        b"HEAD /stream HTTP/1.1\r\nHost: fn\r\n\r\n",  # a last chunk would follow a HEAD answer
    ],
    ids=["connection-close", "http-1.0", "head"],
)
def test_unmarked_or_refused_keep_alive_still_closes(server: str, request_head: bytes) -> None:
    with connect(server) as conn:
        reply = exchange(conn, request_head, b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.")
        assert closed_by_server(conn)


def test_stream_failing_half_way_closes_the_connection(server: str) -> None:
    with connect(server) as conn:
        reply = exchange(conn, b"GET /fail HTTP/1.1\r\nHost: fn\r\n\r\n", b"first\n\r\n")
        assert b"first" in reply
        assert closed_by_server(conn)  # no last chunk: the client must see a cut body

