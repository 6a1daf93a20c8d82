"""Connections that never finish a request (slowloris) are closed, and cannot starve the gateway."""

from __future__ import annotations

import resource
import selectors
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from platform_fixture import Platform

HEADER_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 5.0
SLOW_CLIENTS = 2000


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    args = ("--header-timeout", f"{HEADER_TIMEOUT:g}s", "--keepalive-timeout", f"{KEEPALIVE_TIMEOUT:g}s")
    p = Platform(tmp_path_factory.mktemp("state"), args).start()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module", autouse=True)
def enough_file_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = SLOW_CLIENTS + 512
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _address(p: Platform) -> tuple[str, int]:
    parts = urlsplit(p.url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def _wait_closed(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """Wait until the peer has closed every socket; returns those still open at the deadline."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    if sock.recv(65536):
                        continue  # an answer (there should be none) before the close
                except ConnectionResetError:
                    pass
                selector.unregister(sock)
        return [key.fileobj for key in selector.get_map().values()]  # type: ignore[misc]
    finally:
        selector.close()


def test_slowloris_connections_are_closed(gateway: Platform) -> None:
    address = _address(gateway)
    socks: list[socket.socket] = []
    try:
        for i in range(SLOW_CLIENTS):
            sock = socket.create_connection(address, timeout=10)
            socks.append(sock)
            if i % 2:  # half send a head that never ends, half send nothing at all
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: ")
        opened = time.monotonic()
        # The gateway keeps answering while it holds them all.
        r = httpx.get(f"{gateway.url}/healthz", timeout=5)
        assert r.status_code == 200
        assert time.monotonic() - opened < 3
        # All closed by their header deadline, well before the keep-alive one.
        still_open = _wait_closed(socks, opened + HEADER_TIMEOUT + 3 - time.monotonic())
        assert not still_open, f"{len(still_open)} of {SLOW_CLIENTS} connections still open"
    finally:
        for sock in socks:
            sock.close()
    r = httpx.get(f"{gateway.url}/healthz", timeout=5)
    assert r.status_code == 200


def _trickle(sock: socket.socket, head: bytes, gap: float, limit: float) -> tuple[bool, float]:
    """Send ``head`` a byte every ``gap`` seconds until the gateway closes the connection.

    Returns (closed, seconds from the first byte)."""
    started = time.monotonic()
    for i in range(len(head)):
        sock.sendall(head[i : i + 1])
        readable = selectors.DefaultSelector()
        readable.register(sock, selectors.EVENT_READ)
        ready = readable.select(gap)  # paces the trickle, and sees a close at once
        readable.close()
        if ready:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return True, time.monotonic() - started
        if time.monotonic() - started > limit:
            break
    return False, time.monotonic() - started


SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"


def test_trickled_request_head_hits_the_header_deadline(gateway: Platform) -> None:
    with socket.create_connection(_address(gateway), timeout=10) as sock:
        closed, after = _trickle(sock, SLOW_HEAD, 0.1, HEADER_TIMEOUT + 10)
    assert closed, "a head sent a byte at a time was still being read"
    assert after < HEADER_TIMEOUT + 2


def test_trickled_head_on_a_kept_alive_connection_hits_the_header_deadline(gateway: Platform) -> None:
    with socket.create_connection(_address(gateway), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        closed, after = _trickle(sock, SLOW_HEAD, 0.1, KEEPALIVE_TIMEOUT + 10)
    assert closed, "the second head, sent a byte at a time, was still being read"
    assert after < HEADER_TIMEOUT + 2  # its own deadline, well before the keep-alive one


def test_idle_keepalive_connections_are_closed(gateway: Platform) -> None:
    with socket.create_connection(_address(gateway), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        answered = time.monotonic()
        assert not _wait_closed([sock], KEEPALIVE_TIMEOUT + 10), "an idle connection was kept"
        idle = time.monotonic() - answered
    # Idle between requests is not a slow head: the keep-alive limit applies, not the head's.
    assert KEEPALIVE_TIMEOUT - 0.5 < idle < KEEPALIVE_TIMEOUT + 3

