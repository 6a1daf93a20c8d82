"""What a web page in the user's browser can make the model server do: nothing. Another
origin's page could send a ``no-cors`` POST (no preflight) and make the model generate, and a
DNS-rebinding page reaches a loopback server under its own name, same-origin."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from llm_server import API_KEY, LLMServer

HELLO = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 2}


def _post(llm: LLMServer, headers: dict[str, str], auth: bool = False) -> httpx.Response:
    if auth:
        headers = {**headers, "Authorization": f"Bearer {API_KEY}"}
    # text/plain, as a page's no-cors fetch sends it
    return httpx.post(f"{llm.url}/v1/chat/completions", content=httpx.Request("POST", "/", json=HELLO).content,
                      headers={"Content-Type": "text/plain", **headers}, timeout=60)


@pytest.mark.parametrize("headers", [
    {"Origin": "http://attacker.example", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "http://attacker.example"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "null"},
    {"Origin": "http://["},
])
def test_a_page_on_another_origin_cannot_make_the_model_generate(llm: LLMServer, headers: dict[str, str]) -> None:
    before = llm.stats()["requests_total"]
    r = _post(llm, headers)
    assert r.status_code == 403, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == "cross_site_request" and "refused" in error["message"]
    assert llm.stats()["requests_total"] == before


def test_clients_that_are_not_pages_and_same_origin_pages_still_generate(llm: LLMServer) -> None:
    port = llm.url.rsplit(":", 1)[1]
    for headers in ({}, {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"},
                    {"Host": f"localhost:{port}"}):
        r = _post(llm, headers)
        assert r.status_code == 200, (headers, r.text)


def test_a_rebound_page_cannot_use_a_server_without_a_key(llm: LLMServer) -> None:
    port = llm.url.rsplit(":", 1)[1]
    host = f"rebind.attacker.example:{port}"
    same_origin = {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
    before = llm.stats()["requests_total"]
    r = _post(llm, same_origin)
    assert r.status_code == 403 and "loopback" in r.json()["error"]["message"]
    assert httpx.get(f"{llm.url}/v1/models", headers={"Host": host}, timeout=30).status_code == 403
    assert llm.stats()["requests_total"] == before


def test_with_an_api_key_any_host_name_is_served(guarded_llm: LLMServer) -> None:
    """A key is what guards a server reached by another name (behind a proxy, say)."""
    r = httpx.get(f"{guarded_llm.url}/v1/models", timeout=30,
                  headers={"Host": "models.example.com", "Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200
