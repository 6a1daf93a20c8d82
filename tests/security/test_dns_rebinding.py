"""DNS rebinding against ``--auth none``: a page at ``http://attacker.example:PORT`` whose name
later resolves to 127.0.0.1 reaches the gateway's loopback listener, and its requests are
same-origin (``Origin`` matches ``Host``), so only the name in ``Host`` tells them apart. With
no password, the admin API answers only requests addressed to a loopback name."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from platform_fixture import Platform


@pytest.fixture(scope="module")
def open_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = Platform(tmp_path_factory.mktemp("rebinding") / "state", ("--auth", "none")).start()
    try:
        yield p
    finally:
        p.close()


def _secret_names(p: Platform) -> list[str]:
    r = p.http.get(p.url + "/system/secrets")
    assert r.status_code == 200, r.text
    return [s["name"] for s in r.json()]


def _rebound(p: Platform, name: str = "rebind.attacker.example") -> dict[str, str]:
    """What a browser sends from the rebound page: its own name, as Host and as Origin."""
    host = f"{name}:{p.url.rsplit(':', 1)[1]}"
    return {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}


@pytest.mark.parametrize("name", ["rebind.attacker.example", "localhost.attacker.example", "127.0.0.1.nip.io"])
def test_a_rebound_page_can_neither_read_nor_change_the_admin_api_without_auth(open_platform: Platform, name: str) -> None:
    p = open_platform
    headers = _rebound(p, name)
    r = p.http.post(p.url + "/system/secrets", json={"name": "rebound", "value": "x"}, headers=headers)
    assert r.status_code == 403 and "loopback" in r.text and "Traceback" not in r.text
    assert "rebound" not in _secret_names(p)
    for path in ("/system/secrets", "/system/functions", "/system/info", "/ui/"):
        r = p.http.get(p.url + path, headers=headers)
        assert r.status_code == 403, (path, r.status_code)
    # A function is still anyone's to call, by any name (only the admin API is held back).
    assert p.http.get(p.url + "/healthz", headers=headers).status_code == 200


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "LOCALHOST.", "app.localhost", "127.0.0.2", "[::1]"])
def test_loopback_names_still_reach_the_admin_api_without_auth(open_platform: Platform, name: str) -> None:
    p = open_platform
    headers = _rebound(p, name)
    r = p.http.post(p.url + "/system/secrets", json={"name": "loopback-name", "value": "x"}, headers=headers)
    assert r.status_code in (200, 201), (name, r.status_code, r.text)
    assert p.http.get(p.url + "/system/functions", headers={"Host": headers["Host"]}).status_code == 200
    assert p.http.request("DELETE", p.url + "/system/secrets", json={"name": "loopback-name"}).status_code == 200


def test_with_a_password_any_host_name_is_served(shared_platform: Platform) -> None:
    """Behind a proxy the gateway is reached by its public name; the password guards it there."""
    r = shared_platform.http.get(shared_platform.url + "/system/functions", headers={"Host": "gateway.example.com"})
    assert r.status_code == 200


@pytest.mark.parametrize("origin", ["http://[", "http://[::1", "http://a:b:c"])
def test_a_malformed_origin_is_refused_not_a_server_error(shared_platform: Platform, origin: str) -> None:
    r = shared_platform.http.post(shared_platform.url + "/system/secrets", json={"name": "bad-origin", "value": "x"},
                                  headers={"Origin": origin})
    assert r.status_code == 403 and "origin" in r.text
    names = [s["name"] for s in shared_platform.http.get(shared_platform.url + "/system/secrets").json()]
    assert "bad-origin" not in names


@pytest.mark.parametrize("host", ["evil.com@127.0.0.1", "user@127.0.0.1", "127.0.0.1#evil.com", "127.0.0.1/evil",
                                  "127.0.0.1?x", "[::1%25lo]", "127.0.0.1 evil.com"])
def test_a_host_header_that_is_not_just_a_host_is_not_taken_for_loopback(open_platform: Platform, host: str) -> None:
    r = open_platform.http.get(open_platform.url + "/system/functions", headers={"Host": host})
    assert r.status_code in (400, 403), (host, r.status_code)


def test_an_absolute_form_target_does_not_stand_in_for_the_host_header(open_platform: Platform) -> None:
    """aiohttp's ``request.host`` prefers an absolute-form target's authority; the Host header,
    which the browser sets, is what both checks read."""
    parts = urlsplit(open_platform.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(b"GET http://127.0.0.1/system/functions HTTP/1.1\r\nHost: rebind.attacker.example\r\n"
                     b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"rebind.attacker.example" in answer
