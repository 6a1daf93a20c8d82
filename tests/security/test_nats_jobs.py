"""The NATS JetStream queue against hostile jobs: one that fits only until its first failure (it
could then be neither retried nor dead-lettered, and ran again after every lease, for ever), one
put on a function's subject by someone else, naming another function, and NATS URLs shown in
messages whatever their form."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from queue_fixture import NATS_SERVER, CallbackReceiver, NatsServer, submit

from platform_fixture import Platform, wait_for
from streamfaas.queue.jetstream import JOB_HEADER, redact_url

pytestmark = pytest.mark.skipif(NATS_SERVER is None, reason="nats-server is not on PATH (apt-get install nats-server)")

FAILING = "def handle(req):\n    raise RuntimeError('always')\n"
MAX_PAYLOAD = 1024 * 1024  # nats-server's default


@pytest.fixture(scope="module")
def nats_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, NatsServer, Path]]:
    root = tmp_path_factory.mktemp("nats-jobs")
    server = NatsServer(root / "nats")
    p = None
    try:
        p = Platform(root / "state", ("--queue", "nats", "--nats-url", server.url, "--callback-allow", "127.0.0.1/32",
                                      "--max-async-body", "2MiB")).start()
        p.deploy("fails", p.write_function(root, "fails", FAILING))
        p.deploy("probe", p.write_function(root, "probe", "def handle(req):\n    return 'probe ' + req\n"))
        p.deploy("hidden", p.write_function(root, "hidden", "def handle(req):\n    return 'hidden ran'\n"),
                 labels={"streamfaas.auth/private": "true"})
        yield p, server, root
    finally:
        if p is not None:
            p.close()
        server.stop()


def test_a_nats_server_without_credentials_is_warned_about(nats_platform: tuple[Platform, NatsServer, Path]) -> None:
    """This module's NATS asks for no credentials: the gateway says so once, at start, naming
    what it opens up (test_nats_credentials checks that a guarded server gets no warning)."""
    p, server, _ = nats_platform
    lines = [line for line in p.log_path.read_text().splitlines() if "asks for no credentials" in line]
    assert len(lines) == 1, lines
    assert server.url.removeprefix("nats://") in lines[0] and "private ones too" in lines[0]


def test_a_body_that_leaves_no_room_for_its_error_is_refused_at_submit(nats_platform: tuple[Platform, NatsServer, Path]) -> None:
    p, _, _ = nats_platform
    r = submit(p, "fails", b"x" * (MAX_PAYLOAD - 2_000))  # fits now, not once a retry adds its error
    assert r.status_code == 413, r.text
    assert "max_payload" in r.text


def test_headers_that_leave_no_room_for_the_error_are_refused_at_submit(nats_platform: tuple[Platform, NatsServer, Path]) -> None:
    p, _, _ = nats_platform
    headers = {f"X-Big{i}": "b" * 7_900 for i in range(8)} | {"X-Big9": "b" * 1_790}
    r = submit(p, "probe", b"{}", headers=headers, callback="http://127.0.0.1:1/x")
    assert r.status_code == 413, r.text
    assert "NATS" in r.text and "nats://" not in r.text  # the server's address is not the caller's business


def test_a_job_that_names_another_function_than_its_subject_is_dropped(
    nats_platform: tuple[Platform, NatsServer, Path], receiver: CallbackReceiver
) -> None:
    """On a NATS server without credentials a function could publish to a public function's
    subject a job naming a private one, which the worker ran with the private function's token."""
    p, server, _ = nats_platform
    first = submit(p, "probe", b"a", callback=receiver.url)  # probe's consumer exists from now on
    assert first.status_code == 202
    receiver.wait_all([first.headers["X-Call-Id"]], timeout=60)
    forged = {"callId": "forged-1", "function": "hidden", "method": "POST", "path": "", "query": "", "headers": [],
              "callbackUrl": receiver.url, "privateOk": True, "submittedAt": 0.0, "attempts": 0, "lastError": "",
              "notBefore": 0.0}

    async def publish() -> None:
        nc = await nats.connect(server.url)
        try:
            await nc.jetstream().publish("streamfaas_async.jobs.probe", b"x", headers={JOB_HEADER: json.dumps(forged)})
        finally:
            await nc.close()

    asyncio.run(publish())
    wait_for(lambda: "dropping job forged-1" in p.log_path.read_text(errors="replace"), 60,
             what="the worker to drop the forged job")
    after = submit(p, "probe", b"b", callback=receiver.url)  # the consumer goes on
    receiver.wait_all([after.headers["X-Call-Id"]], timeout=60)
    assert receiver.of("forged-1") == []
    assert "hidden ran" not in p.log_path.read_text(errors="replace")


@pytest.mark.parametrize(("url", "secret"), [
    ("user:pw-secret@127.0.0.1:4222", "pw-secret"),  # no scheme: nats-py takes it
    ("nats://user:pa,ss-secret@127.0.0.1:4222", "ss-secret"),  # a comma in the password
    ("nats://user:pa,ss-secret@127.0.0.1:4222", "pa,"),
    ("nats://a:p1-secret@h1:4222,nats://b:p2-secret@h2:4222", "-secret"),
    ("nats://tok-secret@h1:4222", "tok-secret"),
    ("tls://u:x-secret@h1:4222,h2:4222", "x-secret"),
])
def test_nats_urls_are_shown_without_passwords_in_any_form(url: str, secret: str) -> None:
    shown = redact_url(url)
    assert secret not in shown and "***@" in shown, shown
    assert "127.0.0.1:4222" in shown or "h1:4222" in shown
