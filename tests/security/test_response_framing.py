"""A function's response body cannot become HTTP framing on the caller's connection.

The function is untrusted code. What it streams is data: the watchdog and the gateway parse its
framing (aiohttp) and frame the body afresh for the next hop, on the copy loop's path and on
direct delivery alike (``proxy_direct``: a chunk written from the upstream connection's read
callback). So bytes that look like a chunk end and a second response arrive as body bytes, and
the next request on the same keep-alive connection gets its own answer. A function server that
breaks HTTP's framing itself (a bad chunk size, a chunk cut short, both Content-Length and
Transfer-Encoding) fails its own stream only: nothing of what follows the break reaches the
caller, and the gateway goes on serving.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import h11
import pytest

from platform_fixture import Platform

# Looks like the end of a chunked body followed by a second, forged response.
FORGED = b"0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Forged: 1\r\n\r\nforged"

SMUGGLER = """
import time
from flask import Response

PARTS = [b"data: one\\n\\n", b"0\\r\\n\\r\\nHTTP/1.1 200 OK\\r\\nContent-Length: 6\\r\\nX-Forged: 1\\r\\n\\r\\nforged",
         b"\\r\\n0\\r\\n\\r\\n", b"data: last\\n\\n"]

def handle(req):
    def gen():
        for part in PARTS:
            yield part
            time.sleep(0.05)  # each part its own chunk, sent while the proxies wait for it
    return Response(gen(), mimetype="text/event-stream")
"""

# A python3-flask function whose handler, at import, swaps the template's server for a raw one
# on the same socket: a function server that writes whatever framing it likes. The health
# check gets a proper answer (so the replica becomes ready); every other request gets the
# response named by its path.
RAW_SERVER = r'''
import os, socket, sys, threading

BROKEN = {
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nAFTER-THE-BREAK\r\n0\r\n\r\n",
    # 0x40 bytes announced, 7 sent, then the connection closes: the 7 are body, the end is missing.
    "short-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n40\r\npartial",
    "length-and-chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nAFTER-THE-BREAK",
}

def answer(conn):
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(65536)
            if not data:
                return
            head += data
        path = head.split(b" ", 2)[1].decode()
        if path == "/_/health":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nOK\n")
            return
        conn.sendall(BROKEN.get(path.strip("/"), b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))

def serve(app):
    listener = socket.socket(fileno=int(os.environ["STREAMFAAS_LISTEN_FD"]))
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()

sys.modules["__main__"].serve_app = serve

def handle(req):
    return "unused"
'''


class Connection:
    """One keep-alive client connection, its responses parsed by h11."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        self.host = parts.netloc
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        self.conn = h11.Connection(h11.CLIENT)

    def get(self, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
        """One request on this connection: the status, headers and whole body."""
        self.sock.sendall(self.conn.send(h11.Request(method="GET", target=path, headers=[("Host", self.host)])))
        self.sock.sendall(self.conn.send(h11.EndOfMessage()))
        status, headers, body = 0, {}, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(65536)
                assert b"AFTER-THE-BREAK" not in data
                self.conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self.conn.start_next_cycle()
                return status, headers, body
            else:
                raise AssertionError(f"unexpected {event!r}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def framing(shared_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Platform:
    root = tmp_path_factory.mktemp("framing")
    p = shared_platform
    p.deploy("smuggler", p.write_function(root, "smuggler", SMUGGLER))
    p.deploy("raw-framing", p.write_function(root, "raw-framing", RAW_SERVER))
    p.deploy("plain", p.write_function(root, "plain", "def handle(req):\n    return 'plain answer'\n"))
    return p


@pytest.fixture
def keepalive(framing: Platform) -> Iterator[Connection]:
    c = Connection(framing.url)
    try:
        yield c
    finally:
        c.close()


def test_a_body_that_looks_like_framing_arrives_as_body_and_the_connection_stays_sound(keepalive: Connection) -> None:
    for _ in range(3):  # the same connection each time: a forged response would desync it
        status, headers, body = keepalive.get("/function/smuggler")
        assert status == 200 and b"x-forged" not in headers
        assert body == b"retry: 3000\ndata: one\n\n" + FORGED + b"\r\n0\r\n\r\ndata: last\n\n"
        status, headers, body = keepalive.get("/function/plain")
        assert (status, body) == (200, b"plain answer") and b"x-forged" not in headers


@pytest.mark.parametrize("broken", ["bad-chunk-size", "short-chunk", "length-and-chunked"])
def test_a_function_server_that_breaks_framing_fails_only_its_own_stream(framing: Platform, broken: str) -> None:
    c = Connection(framing.url)
    try:
        try:
            status, _, body = c.get(f"/function/raw-framing/{broken}")
        except h11.RemoteProtocolError:
            pass  # cut off after its head: the caller sees an incomplete response, as it should
        else:  # or refused before any of it went out; never a whole 200 of what came before
            assert status == 502 and b"AFTER-THE-BREAK" not in body, (status, body)
    finally:
        c.close()
    # Nothing after the break was left for the next request; the gateway serves on.
    after = Connection(framing.url)
    try:
        assert after.get("/function/plain")[::2] == (200, b"plain answer")
    finally:
        after.close()


def test_an_unsized_stream_to_an_http10_keep_alive_client_ends_with_the_connection(framing: Platform) -> None:
    """HTTP/1.0 has no chunks: a body of no known length ends only when the connection closes.
    aiohttp kept a keep-alive HTTP/1.0 connection open after one, so the client waited for the
    end, and the next pipelined request's response arrived inside this one's body."""
    parts = urlsplit(framing.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(b"GET /function/smuggler HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                     b"GET /function/plain HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):  # the gateway's close ends the body (a timeout fails the test)
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"content-length" not in head.lower()
    assert body.endswith(b"data: last\n\n"), body[-200:]
    assert b"plain answer" not in body  # the second request was not answered into this body
