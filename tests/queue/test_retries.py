"""Retries with backoff, the dead-letter list, and retrying from it (REST API and CLI)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from queue_fixture import (
    ECHO,
    FAST_QUEUE,
    FIXABLE,
    FLAKY,
    CallbackReceiver,
    queue_args,
    refused_url,
    submit,
)

from platform_fixture import Platform, Signals, streamfaas_cmd, wait_for

MAX_RETRIES = 3  # FAST_QUEUE's --queue-max-retries: 4 attempts in all
MAX_RESPONSE = 64 * 1024
# An answer that never ends: the worker held it whole in the gateway's memory (1.5 GiB in 10 s).
ENDLESS = """
def handle(req):
    def gen():
        while True:
            yield "x" * 65536
    return gen()
"""


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, backend: str, nats_url: str | None, shared_signals: Signals
) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("retries")
    p = Platform(root / "state", (*queue_args(backend, nats_url), *FAST_QUEUE, "--max-async-response", str(MAX_RESPONSE))).start()
    try:
        signals = {"SIGNALS": shared_signals.url}  # marks and gates are per call id: both backends share it
        p.deploy("flaky", p.write_function(root, "flaky", FLAKY), env=signals, wait=False)
        p.deploy("fixable", p.write_function(root, "fixable", FIXABLE), env=signals, wait=False)
        p.deploy("echo", p.write_function(root, "echo", ECHO), wait=False)
        p.deploy("endless", p.write_function(root, "endless", ENDLESS), wait=False)
        for name in ("flaky", "fixable", "echo", "endless"):
            p.wait_ready(name)
        yield p
    finally:
        p.close()


def cli(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(streamfaas_cmd(*args), capture_output=True, text=True, env=platform.env(), timeout=60)
    assert out.returncode == 0, out.stderr
    return out


def dead_letters(platform: Platform) -> dict[str, dict[str, Any]]:
    data = json.loads(cli(platform, "queue", "list", "--failed", "--json").stdout)
    return {job["callId"]: job for job in data["jobs"]}


def test_function_failing_twice_is_retried_until_its_callback_arrives(gateway: Platform, receiver: CallbackReceiver) -> None:
    call_id = submit(gateway, "flaky", b"", callback=receiver.url).headers["X-Call-Id"]
    receiver.wait_all([call_id], timeout=30)
    [callback] = receiver.of(call_id)
    assert callback.function_status == "200"
    assert callback.body == b"success after 3"  # two failures, then the third attempt


def test_always_failing_job_is_dead_lettered_and_retry_reruns_it(
    gateway: Platform, receiver: CallbackReceiver, shared_signals: Signals
) -> None:
    call_id = submit(gateway, "fixable", b"", callback=receiver.url).headers["X-Call-Id"]
    job = wait_for(lambda: dead_letters(gateway).get(call_id), 30, what="the job to be dead-lettered")
    assert job["attempts"] == MAX_RETRIES + 1
    assert "HTTP 503" in job["lastError"]
    assert receiver.of(call_id) == []  # no callback for a job that never succeeded
    table = cli(gateway, "queue", "list", "--failed").stdout
    assert call_id in table and "fixable" in table

    shared_signals.open(f"fixed-{call_id}")  # the function is fixed; the dead letter runs again on request
    assert "retried 1 job" in cli(gateway, "queue", "retry", call_id).stderr
    receiver.wait_all([call_id], timeout=30)
    assert receiver.of(call_id)[0].body == b"fixed"
    assert call_id not in dead_letters(gateway)


def test_retry_of_an_unknown_call_id_fails_clearly(gateway: Platform) -> None:
    out = subprocess.run(streamfaas_cmd("queue", "retry", "no-such-call"), capture_output=True, text=True,
                         env=gateway.env(), timeout=60)
    assert out.returncode == 1
    assert "no dead-lettered job with call id 'no-such-call'" in out.stderr


def test_refused_callback_is_retried_then_dead_lettered(gateway: Platform) -> None:
    call_id = submit(gateway, "echo", b"x", callback=refused_url()).headers["X-Call-Id"]
    job = wait_for(lambda: dead_letters(gateway).get(call_id), 30, what="the job to be dead-lettered")
    # The function ran once; its answer was offered to the callback on every try.
    assert job["attempts"] == 1
    assert "callback" in job["lastError"] and "Connect" in job["lastError"]
    assert job["lastError"].endswith(f"({MAX_RETRIES + 1} tries with one answer of the function, not run again)")
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert 'streamfaas_queue_retries_total{function_name="echo",reason="callback"}' in metrics
    # Purging the dead-letter list is explicit and reported.
    assert "purged" in cli(gateway, "queue", "purge", "--failed", "--yes").stderr
    assert call_id not in dead_letters(gateway)


def test_a_callback_urls_credentials_stay_out_of_errors_logs_and_listings(gateway: Platform) -> None:
    # A receiver's credentials ride in its URL (user:password@, a token in the path or query, as
    # webhook URLs have): errors and logs name the callback by its origin, listings hide the password.
    port = refused_url().rsplit(":", 1)[1].split("/", 1)[0]
    secrets = ("cb-s3cret-pw", "tok-9f8e7d6c", "q-s3cret-key")
    url = f"http://cbuser:{secrets[0]}@127.0.0.1:{port}/hook/{secrets[1]}?key={secrets[2]}"
    call_id = submit(gateway, "echo", b"x", callback=url).headers["X-Call-Id"]
    job = wait_for(lambda: dead_letters(gateway).get(call_id), 30, what="the job to be dead-lettered")
    assert job["lastError"].startswith(f"callback to http://127.0.0.1:{port} failed: "), job["lastError"]
    assert job["callbackUrl"] == f"http://cbuser:***@127.0.0.1:{port}/hook/{secrets[1]}?key={secrets[2]}"
    log = gateway.log_path.read_text(errors="replace")
    assert call_id in log  # the dead letter was logged, with its error
    for secret in secrets:
        assert secret not in job["lastError"]
        assert secret not in log
    assert secrets[0] not in json.dumps(job)


def test_rest_api_lists_queue_and_rejects_bad_retry_bodies(gateway: Platform) -> None:
    r = gateway.http.get(f"{gateway.url}/system/queue")
    assert r.status_code == 200
    assert set(r.json()) == {"depth", "jobs"}
    assert gateway.http.post(f"{gateway.url}/system/queue/retry", json={}).status_code == 400
    assert gateway.http.post(f"{gateway.url}/system/queue/retry", json={"all": True, "callId": "x"}).status_code == 400
    # /system/queue is admin-only, like the rest of /system.
    assert httpx.get(f"{gateway.url}/system/queue", timeout=10).status_code == 401


def test_an_answer_over_the_limit_is_dead_lettered_at_once_not_held(gateway: Platform) -> None:
    call_id = submit(gateway, "endless", b"").headers["X-Call-Id"]
    job = wait_for(lambda: dead_letters(gateway).get(call_id), 30, what="the job to be dead-lettered")
    assert job["attempts"] == 1  # not retried: the same answer would come again
    assert job["lastError"] == f"the function's answer is larger than {MAX_RESPONSE} bytes (--max-async-response)"
    # An answer under the limit is delivered as ever.
    small = submit(gateway, "echo", b"y" * 1000).headers["X-Call-Id"]

    def delivered() -> bool:
        pending = json.loads(cli(gateway, "queue", "list", "--json").stdout)["jobs"]
        return all(j["callId"] != small for j in pending) and small not in dead_letters(gateway)

    wait_for(delivered, 30, what="the small job to be delivered")


def test_a_call_id_that_looks_like_markup_is_shown_as_text(gateway: Platform) -> None:
    # The caller chooses a job's call id: `queue list` showed it as rich markup ("[/x]" crashed
    # it with a traceback until the job was purged; "[link=…]" disguised a link).
    call_id = "[/oops][link=https://evil.example]x[/link]"
    submit(gateway, "endless", b"", call_id=call_id)
    wait_for(lambda: call_id in dead_letters(gateway), 30, what="the job to be dead-lettered")
    out = cli(gateway, "queue", "list", "--failed")
    assert call_id in out.stdout


def test_a_callback_receiver_that_answers_without_end_is_not_read(gateway: Platform) -> None:
    # Only the callback's status counts: its body was read whole, and a receiver that answered
    # without end grew the gateway by GiBs until callback_timeout.
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    sent = {"bytes": 0}
    cut = threading.Event()

    class Endless(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            block = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
            try:
                while sent["bytes"] < 4 << 30 and not cut.is_set():
                    self.wfile.write(block)
                    sent["bytes"] += 65536
            except OSError:
                cut.set()  # the worker hung up

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        call_id = submit(gateway, "echo", b"e", callback=f"http://127.0.0.1:{server.server_address[1]}/cb").headers["X-Call-Id"]
        assert cut.wait(20), f"the worker kept reading ({sent['bytes'] >> 20} MiB)"
        assert sent["bytes"] < 256 << 20
        pending = lambda: json.loads(cli(gateway, "queue", "list", "--json").stdout)["jobs"]  # noqa: E731
        wait_for(lambda: all(j["callId"] != call_id for j in pending()), 30, what="the job to be done")
        assert call_id not in dead_letters(gateway)  # a 200 is a delivered callback
    finally:
        cut.set()
        server.shutdown()
        server.server_close()
