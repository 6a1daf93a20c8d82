"""README promises about replicas and the gateway's settings, each proved over real processes."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from platform_fixture import Platform, Signals, streamfaas_cmd, wait_for

HELLO = "def handle(req):\n    return 'hello'\n"
CRASH_AT_START = "raise SystemExit('crashing on purpose at import')\n"


def test_scale_min_label_sets_the_replicas_of_the_first_deploy(tmp_path: Path) -> None:
    # The deploy API alone: a running autoscaler would bring the hand-scaled 1 back up to the
    # label's minimum of 3 whenever it ticks (tests/autoscale/ covers that side).
    with Platform(tmp_path / "state", ("--no-autoscale",)).start() as p:
        p.deploy("three", p.write_function(tmp_path, "three", HELLO), labels={"com.openfaas.scale.min": "3"}, wait=False)
        p.wait_ready("three", replicas=3)
        status = p.status("three")
        assert status["replicas"] == 3 and status["availableReplicas"] == 3
        served_by = {httpx.get(p.function_url("three"), timeout=30).headers["x-served-by"] for _ in range(12)}
        assert len(served_by) == 3  # all three take requests
        # A later deploy of the same name keeps the current count (the label sets the first one).
        assert p.http.post(p.url + "/system/scale-function/three", json={"replicas": 1}).status_code in {200, 202}
        p.deploy("three", p.write_function(tmp_path, "three", HELLO), labels={"com.openfaas.scale.min": "3"})
        assert p.status("three")["replicas"] == 1


def test_crashing_replica_is_restarted_with_doubling_backoff(platform: Platform, tmp_path: Path) -> None:
    p = platform
    p.deploy("crasher", p.write_function(tmp_path, "crasher", CRASH_AT_START), wait=False)
    log = p.state_dir / "logs" / "crasher.log"

    def delays() -> list[float]:
        text = log.read_text() if log.exists() else ""
        return [float(d) for d in re.findall(r"replica exited with code \S+; restarting in ([\d.]+)s", text)]

    seen = wait_for(lambda: len(delays()) >= 4 and delays(), timeout=30, what="four restarts")
    assert seen[:4] == [0.2, 0.4, 0.8, 1.6]
    assert "crashing on purpose at import" in log.read_text()
    assert p.status("crasher")["availableReplicas"] == 0


def test_basic_auth_password_file_is_the_admin_password(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("from-a-file-pw\n")
    p = Platform(tmp_path / "state", ("--basic-auth-password-file", str(password))).start()
    try:
        assert not (p.state_dir / "auth" / "admin-password").exists()  # none generated
        assert httpx.get(p.url + "/system/functions", auth=("admin", "from-a-file-pw")).status_code == 200
        assert httpx.get(p.url + "/system/functions", auth=("admin", "wrong")).status_code == 401
        assert httpx.get(p.url + "/system/functions").status_code == 401
    finally:
        p.close()
    # An empty password file is refused at start, in one line.
    empty = tmp_path / "empty"
    empty.write_text("\n")
    r = subprocess.run(
        streamfaas_cmd("--state-dir", str(tmp_path / "state2"), "gateway", "--port", "0", "--basic-auth-password-file", str(empty)),
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode != 0
    assert "is empty" in r.stderr and "Traceback" not in r.stderr


GATED = """
import os, urllib.request

def handle(req):
    signals = os.environ["SIGNALS"]
    urllib.request.urlopen(urllib.request.Request(signals + "/mark/started", data=req.encode()), timeout=10).read()
    with urllib.request.urlopen(signals + "/wait/" + os.environ.get("GATE", "release") + "?timeout=30", timeout=40) as r:
        return "released" if r.status == 200 else "gave up"
"""


def _call_in_background(url: str, body: bytes, results: list[tuple[bytes, object]]) -> threading.Thread:
    def call() -> None:
        try:
            r = httpx.post(url, content=body, timeout=60)
            results.append((body, r.status_code if r.text != "gave up" else "gave up"))
        except httpx.HTTPError as exc:
            results.append((body, type(exc).__name__))

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_threads_is_the_number_of_requests_a_replica_runs_at_once(platform: Platform, signals: Signals, tmp_path: Path) -> None:
    p = platform
    p.deploy("twothreads", p.write_function(tmp_path, "twothreads", GATED), env={"threads": "2", "SIGNALS": signals.url})
    results: list[tuple[bytes, object]] = []
    calls = [_call_in_background(p.function_url("twothreads"), f"call-{i}".encode(), results) for i in range(3)]
    try:
        signals.wait_marks("started", 2)
        # The third waits for a thread (no 429: max_inflight is not set) …
        with pytest.raises(AssertionError):
            signals.wait_marks("started", 3, timeout=1.5)
        assert results == []
        signals.open("release")
        # … and runs once one is free.
        signals.wait_marks("started", 3)
    finally:
        signals.open("release")
        for c in calls:
            c.join(60)
    assert sorted(status for _, status in results) == [200, 200, 200]


def test_drain_timeout_lets_in_flight_requests_finish_then_cuts_them(platform: Platform, signals: Signals, tmp_path: Path) -> None:
    p = platform
    code = p.write_function(tmp_path, "drainer", GATED)
    # Within the grace period: the request in flight when the replica stops still finishes.
    p.deploy("drainer", code, env={"drain_timeout": "20s", "SIGNALS": signals.url, "GATE": "finish"})
    results: list[tuple[bytes, object]] = []
    call = _call_in_background(p.function_url("drainer"), b"graceful", results)
    signals.wait_marks("started", 1)
    scaler = threading.Thread(target=lambda: p.http.post(p.url + "/system/scale-function/drainer", json={"replicas": 0}, timeout=60))
    scaler.start()
    wait_for(lambda: p.status("drainer")["availableReplicas"] == 0, what="the replica to leave rotation")
    signals.open("finish")
    call.join(60)
    scaler.join(60)
    assert results == [(b"graceful", 200)]

    # Past the grace period: cut off, long before the function would have finished (30 s).
    p.deploy("drainer", code, env={"drain_timeout": "1s", "SIGNALS": signals.url, "GATE": "never"}, wait=False)
    p.http.post(p.url + "/system/scale-function/drainer", json={"replicas": 1})
    p.wait_ready("drainer")
    results.clear()
    call = _call_in_background(p.function_url("drainer"), b"cut", results)
    signals.wait_marks("started", 2)
    began = time.monotonic()
    assert p.http.post(p.url + "/system/scale-function/drainer", json={"replicas": 0}, timeout=60).status_code in {200, 202}
    call.join(60)
    assert results and results[0][1] not in {200, "gave up"}, results
    assert time.monotonic() - began < 15
