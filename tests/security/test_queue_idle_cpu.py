"""An idle gateway stays idle after async jobs: its queue worker must not spin (a free slot left
signalled made every wait return at once: ~300 SQLite transactions a second, for good)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from queue_fixture import (
    ECHO,
    FAST_QUEUE,
    NATS_SERVER,
    CallbackReceiver,
    NatsServer,
    queue_args,
    submit,
)

from platform_fixture import Platform, wait_for

WINDOW = 10.0  # seconds of idleness measured
MOST_CPU = 0.02  # of one core


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(params=["sqlite", "nats"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Platform]:
    nats: NatsServer | None = None
    if request.param == "nats":
        if NATS_SERVER is None:
            pytest.skip("nats-server is not on PATH (apt-get install nats-server)")
        nats = NatsServer(tmp_path / "nats")
    p = Platform(tmp_path / "state", (*queue_args(request.param, nats.url if nats else None), *FAST_QUEUE))
    try:
        p.start()
        p.deploy("echo", p.write_function(tmp_path, "echo", ECHO))
        yield p
    finally:
        p.close()
        if nats is not None:
            nats.stop()


def test_idle_gateway_does_not_spin_after_async_jobs(gateway: Platform) -> None:
    receiver = CallbackReceiver()
    try:
        ids = [submit(gateway, "echo", b"x", callback=receiver.url).headers["X-Call-Id"] for _ in range(5)]
        receiver.wait_all(ids, timeout=60)
    finally:
        receiver.close()
    # Acked: nothing left to run, and nothing running.
    wait_for(lambda: gateway.http.get(f"{gateway.url}/system/queue").json()["depth"]["pending"] == 0, 20,
             what="the queue to empty")
    assert gateway.proc is not None
    pid = gateway.proc.pid
    before, began = cpu_seconds(pid), time.monotonic()
    time.sleep(WINDOW)  # the measurement itself, not a wait for something to happen
    used = (cpu_seconds(pid) - before) / (time.monotonic() - began)
    assert used < MOST_CPU, f"the idle gateway used {used:.1%} of a core"
