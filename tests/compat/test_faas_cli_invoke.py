"""``faas-cli invoke`` and ``invoke --async`` (through go-sdk): POST /function/NAME.NAMESPACE."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from go_wire import DEFAULT_NAMESPACE, FAAS_CLI_INVOKE_HEADERS, INVOKE_ASYNC_OK, INVOKE_OK
from platform_fixture import Platform, Signals

ECHO = """
from flask import request

def handle(req):
    return f"{request.method} {request.full_path} {req}"
"""


@pytest.fixture(scope="module")
def echo(shared_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fn")
    shared_platform.deploy("echo", shared_platform.write_function(root, "echo", ECHO))
    yield "echo"


def test_invoke_with_the_default_namespace_suffix_reaches_the_function(shared_platform: Platform, echo: str) -> None:
    url = f"{shared_platform.url}/function/{echo}.{DEFAULT_NAMESPACE}?repo=faas-cli&org=openfaas"
    r = httpx.post(url, content=b"hi", headers=FAAS_CLI_INVOKE_HEADERS, timeout=30)
    assert r.status_code in INVOKE_OK, r.text
    assert r.text == "POST /?repo=faas-cli&org=openfaas hi"
    assert r.headers["x-served-by"].startswith(f"{echo}[")


def test_invoke_with_the_namespace_suffix_keeps_the_subpath(shared_platform: Platform, echo: str) -> None:
    r = httpx.get(f"{shared_platform.url}/function/{echo}.{DEFAULT_NAMESPACE}/a/b", headers=FAAS_CLI_INVOKE_HEADERS, timeout=30)
    assert r.status_code in INVOKE_OK, r.text
    assert r.text.startswith("GET /a/b?")


def test_invoke_in_an_unknown_namespace_is_not_found(shared_platform: Platform, echo: str) -> None:
    for path in (f"/function/{echo}.dev", f"/function/{echo}.", f"/async-function/{echo}.dev"):
        r = httpx.post(shared_platform.url + path, content=b"x", headers=FAAS_CLI_INVOKE_HEADERS, timeout=30)
        assert r.status_code == 404, (path, r.text)
        assert "namespace" in r.text and "openfaas-fn" in r.text


def test_invoke_async_with_the_namespace_suffix_is_queued_and_run(shared_platform: Platform, echo: str, signals: Signals) -> None:
    headers = {**FAAS_CLI_INVOKE_HEADERS, "X-Callback-Url": f"{signals.url}/mark/async-echo"}
    r = httpx.post(f"{shared_platform.url}/async-function/{echo}.{DEFAULT_NAMESPACE}", content=b"later", headers=headers, timeout=30)
    assert r.status_code in INVOKE_ASYNC_OK, r.text
    assert r.headers["x-call-id"]
    [result] = signals.wait_marks("async-echo", 1, timeout=30)
    assert result == b"POST /? later"


def test_unknown_function_with_the_namespace_suffix_is_not_found(shared_platform: Platform) -> None:
    r = httpx.post(f"{shared_platform.url}/function/absent.{DEFAULT_NAMESPACE}", content=b"x", timeout=30)
    assert r.status_code == 404
    assert "'absent'" in r.text
