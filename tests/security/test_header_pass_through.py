"""The platform forwards a caller's request headers as they came: it adds none of its own."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest

from platform_fixture import Platform

ECHO_HEADERS = """
import json
from flask import request

def handle(req):
    return json.dumps({k.lower(): v for k, v in request.headers.items()})
"""

# What an HTTP client library typically adds on its own (aiohttp: all four).
ADDED_BY_CLIENTS = ("accept", "accept-encoding", "user-agent", "content-type", "cookie")


def _raw_request(url: str, method: str, body: bytes, extra: str = "") -> tuple[int, bytes]:
    """One request with only Host (and Content-Length for a body): no client adds anything."""
    parts = urlsplit(url)
    head = f"{method} {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n{extra}"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), payload


@pytest.fixture(scope="module")
def echo_headers(shared_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Platform:
    """Two functions that answer with the headers they got: streamed and buffered bodies."""
    root = tmp_path_factory.mktemp("functions")
    for buffer_body in ("false", "true"):
        name = f"echo-headers-{buffer_body}"
        handler = shared_platform.write_function(root, name, ECHO_HEADERS)
        shared_platform.deploy(name, handler, env={"buffer_body": buffer_body})
    return shared_platform


@pytest.mark.parametrize("buffer_body", ["false", "true"])
@pytest.mark.parametrize("method,body", [("GET", b""), ("POST", b"hello")])
def test_watchdog_adds_no_accept_user_agent_or_content_type(
    echo_headers: Platform, buffer_body: str, method: str, body: bytes
) -> None:
    url = echo_headers.function_url(f"echo-headers-{buffer_body}")
    status, payload = _raw_request(url, method, body)
    assert status == 200, payload
    seen = json.loads(payload)
    assert not [h for h in ADDED_BY_CLIENTS if h in seen], seen


def test_callers_own_accept_and_user_agent_arrive_unchanged(echo_headers: Platform) -> None:
    url = echo_headers.function_url("echo-headers-true")
    extra = "Accept: text/x-mine\r\nUser-Agent: mine/1\r\nContent-Type: text/x-body\r\n"
    status, payload = _raw_request(url, "POST", b"hello", extra)
    assert status == 200, payload
    seen = json.loads(payload)
    assert (seen["accept"], seen["user-agent"], seen["content-type"]) == ("text/x-mine", "mine/1", "text/x-body")
    assert "accept-encoding" not in seen
