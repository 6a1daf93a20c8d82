"""Autoscaling end to end (issue #13): a real gateway with short windows, python3-flask
replicas, and real SSE streams. A burst scales out and every stream completes; scale-down
drains and cuts no stream; idle functions go to zero and come back; min = max pins."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from streams import Stream, Streams

from platform_fixture import Platform, Signals, streamfaas_cmd, wait_for

# Short windows, so each test takes seconds: 4 looks a second, a 5 s stable window.
FLAGS = ("--autoscale-interval", "250ms", "--autoscale-stable-window", "5s", "--autoscale-panic-window", "1s")
TARGET = "com.openfaas.scale.target"
PROPORTION = "com.openfaas.scale.target-proportion"
MIN, MAX = "com.openfaas.scale.min", "com.openfaas.scale.max"

# Streams STEPS events, STEP seconds apart, then its final event.
TIMED = """
import os, time
from flask import Response

def handle(req):
    steps, step = int(os.environ["STEPS"]), float(os.environ["STEP"])
    def gen():
        yield "data: first\\n\\n"
        for i in range(steps):
            time.sleep(step)
            yield f"data: {i}\\n\\n"
        yield "event: end\\ndata: done\\n\\n"
    return Response(gen(), mimetype="text/event-stream")
"""
# Streams its first event, then waits for the test to release it (by the request body).
GATED = """
import os, urllib.request
from flask import Response

def handle(req):
    signals = os.environ["SIGNALS"]
    def gen():
        yield "data: first\\n\\n"
        urllib.request.urlopen(signals + "/wait/release-" + req + "?timeout=60", timeout=70).read()
        yield "event: end\\ndata: done\\n\\n"
    return Response(gen(), mimetype="text/event-stream")
"""


@pytest.fixture(scope="module")
def autoscaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = Platform(tmp_path_factory.mktemp("state"), FLAGS).start()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def rare_rounds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """Rounds a minute apart: only a nudge from a waiting request can scale within seconds."""
    with Platform(tmp_path_factory.mktemp("state"), ("--autoscale-interval", "60s")).start() as p:
        yield p


@pytest.fixture
def streams() -> Iterator[Streams]:
    s = Streams()
    try:
        yield s
    finally:
        s.close()


class ReplicaWatch:
    """Polls a function's replicas in a thread: ``(time, replicas, available)`` samples."""

    def __init__(self, platform: Platform, name: str) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(platform, name), daemon=True)
        self._thread.start()

    def _poll(self, platform: Platform, name: str) -> None:
        with httpx.Client(auth=platform.http.auth, timeout=10) as http:
            while not self._stop.is_set():
                s = http.get(f"{platform.url}/system/function/{name}").json()
                self.samples.append((time.monotonic(), s.get("replicas", 0), s.get("availableReplicas", 0)))
                self._stop.wait(0.1)

    def first(self, at_least: int) -> float | None:
        return next((t for t, replicas, _ in self.samples if replicas >= at_least), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def scaling(platform: Platform, name: str) -> dict[str, object]:
    r = platform.http.get(f"{platform.url}/system/function/{name}/scaling")
    r.raise_for_status()
    data: dict[str, object] = r.json()
    return data


def test_a_burst_of_streams_scales_out_fast_and_every_stream_completes(autoscaled: Platform, streams: Streams,
                                                                       tmp_path: Path) -> None:
    p, name = autoscaled, "burst"
    p.deploy(name, p.write_function(tmp_path, name, TIMED), env={"threads": "16", "STEPS": "15", "STEP": "0.2"},
             labels={TARGET: "16", MAX: "20"})
    watch = ReplicaWatch(p, name)
    try:
        began = time.monotonic()
        opened = [streams.open(p.function_url(name)) for _ in range(200)]
        streams.wait(timeout=120)
        up, ten = watch.first(2), watch.first(10)
    finally:
        watch.stop()
    assert up is not None and up - began <= 2.0, f"no scale-up decided within 2 s ({up and up - began})"
    assert ten is not None and ten - began <= 5.0, f"not 10 replicas within 5 s ({ten and ten - began})"
    assert [s for s in opened if s.status != 200 or not s.final] == []
    firsts = sorted(s.first_byte - began for s in opened if s.first_byte is not None)
    # The 17th stream is the first that had to wait (16 threads on the one replica there was).
    print(f"\nfirst byte of the first waiting stream: {firsts[16]:.2f}s; of the last: {firsts[-1]:.2f}s")
    assert len({s.served_by for s in opened}) >= 10  # the new replicas took streams as they came
    # The burst is over: back to min after the stable window (5 s here, then panic lets go).
    wait_for(lambda: p.status(name)["replicas"] == 1, 40, interval=0.2, what="replicas back to min")
    view = scaling(p, name)
    assert (view["waiting"], view["inflight"]) == (0, 0), view  # every count given back
    metrics = httpx.get(p.url + "/metrics", timeout=10).text
    assert 'streamfaas_autoscaler_decisions_total{direction="up",reason="panic"}' in metrics
    assert 'streamfaas_autoscaler_decisions_total{direction="down",reason="stable"}' in metrics
    assert f'gateway_service_target_load{{function_name="{name}",scaling_type="capacity"}} 16.0' in metrics
    assert f'gateway_service_desired_replicas{{function_name="{name}"}} 1.0' in metrics
    assert f'gateway_function_inflight{{function_name="{name}"}} 0.0' in metrics
    shown = subprocess.run(streamfaas_cmd("describe", name), env=p.env(), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "Target:             16 requests in flight per replica × 0.9" in shown.stdout, shown.stdout
    assert "Desired Replicas:   1" in shown.stdout and "Autoscaling:        on; capacity" in shown.stdout


def test_a_waiting_request_has_the_burst_scaled_up_before_the_next_round(rare_rounds: Platform, streams: Streams,
                                                                         tmp_path: Path) -> None:
    p, name = rare_rounds, "nudged"
    p.deploy(name, p.write_function(tmp_path, name, TIMED), env={"threads": "4", "STEPS": "10", "STEP": "0.2"},
             labels={TARGET: "4", MAX: "5"})
    began = time.monotonic()
    opened = [streams.open(p.function_url(name)) for _ in range(20)]
    # The next round is up to a minute away: the waiting requests cue a look of their own.
    wait_for(lambda: p.status(name)["replicas"] == 5, 5, interval=0.05, what="the burst to be scaled up")
    print(f"\nscaled up {time.monotonic() - began:.2f}s after the burst began")
    streams.wait(timeout=60)
    assert [s for s in opened if s.status != 200 or not s.final] == []
    assert len({s.served_by for s in opened}) >= 2
    view = scaling(p, name)
    assert view["panic"] is True and view["desiredReplicas"] == 5, view


def test_scale_down_drains_replicas_and_cuts_no_stream(autoscaled: Platform, streams: Streams,
                                                       tmp_path: Path, signals: Signals) -> None:
    p, name = autoscaled, "drained"
    p.deploy(name, p.write_function(tmp_path, name, GATED), env={"threads": "2", "SIGNALS": signals.url},
             labels={TARGET: "2", PROPORTION: "1", MAX: "4"})
    opened = [streams.open(p.function_url(name), str(i)) for i in range(8)]
    # 2 slots a replica: 6 wait, the peak is over twice the capacity, so 4 replicas at once.
    wait_for(lambda: all(s.first_byte for s in opened), 60, what="every stream's first event")
    by_replica: dict[str, Stream] = {}
    for s in opened:
        by_replica.setdefault(s.served_by, s)
    assert len(by_replica) == 4
    kept = list(by_replica.values())[:2]  # one stream stays open on each of two replicas
    for s in opened:
        if s not in kept:
            signals.open(f"release-{s.body}")
    wait_for(lambda: all(s.ended for s in opened if s not in kept), 30, what="the released streams to end")
    # Load 2 now, one replica's worth: down to 1 once the window says so, draining the replica
    # whose stream is still open rather than cutting it.
    wait_for(lambda: p.status(name)["replicas"] == 1, 40, interval=0.2, what="scale-down to 1")
    view = scaling(p, name)
    assert view["draining"] == 1 and view["inflight"] == 2, view
    assert not any(s.ended for s in kept)
    for s in kept:
        signals.open(f"release-{s.body}")
    streams.wait(timeout=30)
    assert [s for s in opened if s.status != 200 or not s.final] == []
    wait_for(lambda: scaling(p, name)["draining"] == 0, 20, what="the drained replica to stop")


def test_an_idle_function_with_zero_true_goes_to_zero_and_the_next_request_wakes_it(autoscaled: Platform,
                                                                                     tmp_path: Path) -> None:
    p, name = autoscaled, "sleepy"
    p.deploy(name, p.write_function(tmp_path, name, "def handle(req):\n    return 'awake'\n"),
             labels={"com.openfaas.scale.zero": "true", "com.openfaas.scale.zero-duration": "2s"})
    wait_for(lambda: p.status(name)["replicas"] == 0, 20, interval=0.2, what="scale to zero")
    r = httpx.post(p.function_url(name), content=b"x", timeout=60)
    assert r.status_code == 200 and r.text == "awake"
    assert p.status(name)["replicas"] == 1


def test_min_equal_to_max_pins_the_replicas_under_load(autoscaled: Platform, streams: Streams, tmp_path: Path) -> None:
    p, name = autoscaled, "pinned"
    p.deploy(name, p.write_function(tmp_path, name, TIMED), env={"threads": "4", "STEPS": "10", "STEP": "0.2"},
             labels={TARGET: "2", MIN: "2", MAX: "2"})
    p.wait_ready(name, 2)
    watch = ReplicaWatch(p, name)
    try:
        opened = [streams.open(p.function_url(name)) for _ in range(24)]  # 6 replicas' worth
        streams.wait(timeout=60)
    finally:
        watch.stop()
    assert [s for s in opened if s.status != 200 or not s.final] == []
    assert {replicas for _, replicas, _ in watch.samples} == {2}
    assert scaling(p, name)["autoscaling"] is False
