"""``POST /async-function``: 202 with a call id, the callback, 404/413/400, what is stored."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest
from queue_fixture import ECHO, FAST_QUEUE, CallbackReceiver, queue_args, submit

from platform_fixture import Platform, streamfaas_cmd, wait_for


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, backend: str, nats_url: str | None) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("async")
    extra = (*queue_args(backend, nats_url), *FAST_QUEUE, "--max-async-body", "1KiB")
    p = Platform(root / "state", extra).start()
    try:
        handler = p.write_function(root, "echo", ECHO)
        p.deploy("echo", handler)
        yield p
    finally:
        p.close()


def test_async_call_is_accepted_then_called_back(gateway: Platform, receiver: CallbackReceiver) -> None:
    r = submit(gateway, "echo", b"hello", callback=receiver.url, path="/sub/path?x=1",
               headers={"Authorization": "Bearer secret", "Cookie": "session=1", "X-Custom": "kept"})
    assert r.status_code == 202, r.text
    call_id = r.headers["X-Call-Id"]
    assert call_id and r.headers["X-Start-Time"].isdigit()
    receiver.wait_all([call_id], timeout=30)
    [callback] = receiver.of(call_id)
    assert callback.function_status == "200"
    assert float(callback.duration) > 0
    # The function got the method, path, query and body; the caller's credentials were never stored.
    assert callback.body == b"POST /sub/path?x=1 auth='' body=hello"


def test_client_call_id_is_kept(gateway: Platform, receiver: CallbackReceiver) -> None:
    r = submit(gateway, "echo", b"x", callback=receiver.url, call_id="my-call-42")
    assert r.status_code == 202
    assert r.headers["X-Call-Id"] == "my-call-42"
    receiver.wait_all(["my-call-42"], timeout=30)


def test_unknown_function_is_404_and_oversized_body_is_413(gateway: Platform) -> None:
    r = submit(gateway, "nope", b"x")
    assert r.status_code == 404
    assert "nope" in r.text
    r = submit(gateway, "echo", b"x" * 1025)
    assert r.status_code == 413
    assert "--max-async-body" in r.text

    def chunked() -> Iterator[bytes]:
        for _ in range(3):
            yield b"y" * 512

    # Without a Content-Length the limit holds as well.
    r = httpx.post(f"{gateway.url}/async-function/echo", content=chunked(), timeout=30)
    assert r.status_code == 413
    assert submit(gateway, "echo", b"x" * 1024).status_code == 202


def test_bad_callback_url_is_400(gateway: Platform) -> None:
    r = submit(gateway, "echo", b"x", callback="ftp://example/cb")
    assert r.status_code == 400
    assert "X-Callback-Url" in r.text


def test_cli_invoke_async_prints_the_call_id(gateway: Platform, receiver: CallbackReceiver) -> None:
    out = subprocess.run(
        streamfaas_cmd("invoke", "echo", "--async", "--callback", receiver.url),
        input=b"from the cli", capture_output=True, env=gateway.env(), timeout=60,
    )
    assert out.returncode == 0, out.stderr
    call_id = out.stdout.decode().strip()
    assert call_id
    receiver.wait_all([call_id], timeout=30)
    assert receiver.of(call_id)[0].body.endswith(b"body=from the cli")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_queue_metrics_are_exposed(gateway: Platform, receiver: CallbackReceiver) -> None:
    def scrape() -> str:
        return httpx.get(f"{gateway.url}/metrics", timeout=10).text

    done = 'streamfaas_queue_completed_total{code="200",function_name="metered"}'
    handler = gateway.write_function(gateway.state_dir.parent, "metered", ECHO)
    gateway.deploy("metered", handler)
    ids = [submit(gateway, "metered", b"m", callback=receiver.url).headers["X-Call-Id"] for _ in range(3)]
    receiver.wait_all(ids, timeout=30)
    text = wait_for(lambda: (t := scrape()) and _metric(t, done) == 3 and t, 20, what="the completion counter")
    assert _metric(text, 'streamfaas_queue_submitted_total{function_name="metered"}') == 3
    assert _metric(text, 'streamfaas_queue_wait_seconds_count{function_name="metered"}') == 3
    assert 'streamfaas_queue_depth{state="pending"}' in text


def test_private_function_needs_its_token_to_queue_and_still_runs(gateway: Platform, receiver: CallbackReceiver) -> None:
    handler = gateway.write_function(gateway.state_dir.parent, "hidden", ECHO)
    gateway.deploy("hidden", handler, labels={"streamfaas.auth/private": "true"})
    assert submit(gateway, "hidden", b"x", callback=receiver.url).status_code == 401
    token = gateway.http.get(f"{gateway.url}/system/function-token/hidden").json()["token"]
    r = submit(gateway, "hidden", b"secret work", callback=receiver.url, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 202
    call_id = r.headers["X-Call-Id"]
    # The caller's token is not stored; the worker runs the job with the function's own token,
    # which the gateway does not pass on to the function.
    receiver.wait_all([call_id], timeout=30)
    [callback] = receiver.of(call_id)
    assert callback.function_status == "200"
    assert callback.body == b"POST /? auth='' body=secret work"
