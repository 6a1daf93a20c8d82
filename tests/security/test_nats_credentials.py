"""Functions share the host's network, so a NATS server for the async queue needs credentials.
They go in the NATS_URL environment variable (a flag would show them in the process list) and
never appear in a log or an error message."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from queue_fixture import NATS_SERVER, CallbackReceiver, NatsServer, submit

from platform_fixture import Platform, descendants, streamfaas_cmd

PASSWORD = "nats-SECRET-pw-31337"

pytestmark = pytest.mark.skipif(NATS_SERVER is None, reason="nats-server is not on PATH (apt-get install nats-server)")


@pytest.fixture
def guarded_nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", "--user", "streamfaas", "--pass", PASSWORD)
    try:
        yield server
    finally:
        server.stop()


def _with_credentials(url: str, password: str) -> str:
    return url.replace("nats://", f"nats://streamfaas:{password}@", 1)


def test_nats_password_stays_out_of_process_list_and_logs(
    guarded_nats: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATS_URL", _with_credentials(guarded_nats.url, PASSWORD))
    p = Platform(tmp_path / "state", ("--queue", "nats", "--callback-allow", "127.0.0.1/32")).start()
    receiver = CallbackReceiver()
    try:
        p.deploy("natsfn", p.write_function(tmp_path, "natsfn", "def handle(req):\n    return 'done ' + req\n"))
        r = submit(p, "natsfn", b"job", callback=receiver.url)
        assert r.status_code == 202, r.text
        call_id = r.headers["X-Call-Id"]
        receiver.wait_all([call_id], timeout=30)
        assert receiver.of(call_id)[0].body == b"done job"
        assert p.proc is not None
        for pid in {p.proc.pid, *descendants(p.proc.pid)}:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert PASSWORD.encode() not in cmdline, pid
    finally:
        receiver.close()
        p.close()
    log = p.log_path.read_text()
    assert PASSWORD not in log
    assert "asks for no credentials" not in log  # a guarded server gets no warning


def test_wrong_nats_password_is_reported_without_the_password(
    guarded_nats: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-SECRET-guess-42"
    env = {"NATS_URL": _with_credentials(guarded_nats.url, wrong)}
    monkeypatch.setenv("NATS_URL", env["NATS_URL"])
    r = subprocess.run(
        streamfaas_cmd("--state-dir", str(tmp_path / "state"), "gateway", "--port", "0", "--queue", "nats"),
        capture_output=True, text=True, timeout=90,
    )
    assert r.returncode != 0
    assert "NATS" in r.stderr and "***" in r.stderr, r.stderr
    assert wrong not in r.stderr + r.stdout
