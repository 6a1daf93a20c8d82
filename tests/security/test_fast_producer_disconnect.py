"""A function that writes as fast as it can must not outlive the clients that went away."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from platform_fixture import Platform, Signals

STREAMS = 64

# Yields without ever pausing; its finally marks "closed" with the request's tag.
FIREHOSE = """
import os, urllib.request
from flask import Response, request

CHUNK = b"x" * 16384

def handle(req):
    tag = request.args.get("tag")
    if tag is None:
        return "pong"
    signals = os.environ["SIGNALS"]

    def gen():
        try:
            while True:
                yield CHUNK
        finally:
            urllib.request.urlopen(signals + "/mark/closed", tag.encode()).read()

    return Response(gen(), mimetype="application/octet-stream")
"""


def _open_stream(url: str, tag: int) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(f"GET {parts.path}?tag={tag} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    return sock


def _read_some(sock: socket.socket, size: int = 65536) -> None:
    got = 0
    while got < size:
        chunk = sock.recv(size)
        assert chunk, "the stream ended before it started"
        got += len(chunk)


def _abort(sock: socket.socket) -> None:
    # SO_LINGER 0: close sends a reset, as a client that crashes or gives up does.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_fast_producer_stops_when_its_clients_abort(platform: Platform, signals: Signals, tmp_path: Path) -> None:
    handler = platform.write_function(tmp_path, "firehose", FIREHOSE)
    platform.deploy("firehose", handler, env={"SIGNALS": signals.url, "threads": str(STREAMS)})
    url = platform.function_url("firehose")
    socks = [_open_stream(url, i) for i in range(STREAMS)]
    try:
        for sock in socks:
            _read_some(sock)
    finally:
        aborted = time.monotonic()
        for sock in socks:
            _abort(sock)
    closed = signals.wait_marks("closed", STREAMS, timeout=30)  # every generator's finally ran
    elapsed = time.monotonic() - aborted
    assert elapsed < 1.0, f"the last generator stopped {elapsed:.1f}s after its client went away"
    assert sorted(int(tag) for tag in closed) == list(range(STREAMS))  # each stream's, once
    # Every waitress thread is free again: a new request is served at once.
    started = time.monotonic()
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200 and r.text == "pong"
    assert time.monotonic() - started < 1.0
