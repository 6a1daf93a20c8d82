"""The autoscaler's arithmetic (``streamfaas.autoscale.policy``) with a made-up clock: the
desired count, the stable and panic windows, idling to zero, and the labels it reads."""

from __future__ import annotations

import pytest

from streamfaas.autoscale.policy import DOWN, NONE, UP, FunctionPolicy, Windows, replicas_for
from streamfaas.errors import BadRequest
from streamfaas.provider.base import FunctionLoad
from streamfaas.provider.models import ScaleLabels

WINDOWS = Windows(stable=10.0, panic=2.0)
STREAMS = ScaleLabels(min=1, max=20, target=16)  # a python3-flask replica with threads: 16


def streams(n: int, waiting: int = 0, requests: int = 0) -> FunctionLoad:
    return FunctionLoad(inflight=n, waiting=waiting, requests=requests)


def run(policy: FunctionPolicy, loads: list[FunctionLoad], *, start: float, step: float = 0.5,
        scaling: ScaleLabels = STREAMS, current: int = 1) -> tuple[int, float]:
    """Feed one sample per ``step``, scaling as decided; the replicas and the time at the end."""
    now = start
    for load in loads:
        policy.observe(now, load, scaling.type)
        current = policy.decide(now, scaling, current).desired or current
        now += step
    return current, now


def test_desired_is_load_over_target_times_proportion_rounded_up() -> None:
    assert replicas_for(200, 16 * 0.9) == 14
    assert replicas_for(14.4, 14.4) == 1 and replicas_for(14.5, 14.4) == 2
    assert replicas_for(0, 45) == 0


def test_a_burst_panics_and_scales_up_at_the_first_look() -> None:
    policy = FunctionPolicy(WINDOWS, born=0.0)
    for t in range(20):  # quiet: one stream
        policy.observe(t * 0.5, streams(1), "capacity")
    # 200 streams arrive: 16 open on the one replica, 184 waiting for a slot.
    policy.observe(10.0, streams(16, waiting=184), "capacity")
    decision = policy.decide(10.0, STREAMS, current=1)
    assert decision.direction == UP and decision.panic and decision.reason == "panic"
    assert decision.desired == 14  # ceil(200 / 14.4), at once, not one replica at a time


def test_a_peek_panics_on_the_peak_and_leaves_the_stable_mean_alone() -> None:
    policy = FunctionPolicy(WINDOWS, born=0.0)
    for t in range(20):
        policy.observe(t * 0.5, streams(1), "capacity")
    mean = policy.stable.mean(9.6)
    policy.peek(9.6, streams(16, waiting=184))  # a nudge between two rounds
    assert policy.stable.mean(9.6) == mean == 1.0
    decision = policy.decide(9.6, STREAMS, current=1)
    assert decision.direction == UP and decision.panic and decision.desired == 14


def test_panic_never_scales_down_and_ends_a_stable_window_after_it_held() -> None:
    policy = FunctionPolicy(WINDOWS, born=0.0)
    policy.observe(0.0, streams(200), "capacity")
    assert policy.decide(0.0, STREAMS, current=1).desired == 14
    # The burst ends: in panic for a stable window, so the replicas stay.
    for t in (1.0, 5.0, 9.5):
        policy.observe(t, streams(0), "capacity")
        decision = policy.decide(t, STREAMS, current=14)
        assert decision.panic and decision.desired == 14, t
    policy.observe(10.5, streams(0), "capacity")
    decision = policy.decide(10.5, STREAMS, current=14)
    assert not decision.panic and decision.direction == DOWN and decision.reason == "stable"


def test_scale_down_follows_the_stable_window_mean_back_to_min() -> None:
    policy = FunctionPolicy(WINDOWS, born=0.0)
    current, now = run(policy, [streams(100)] * 20, start=0.0)
    assert current == 7
    current, now = run(policy, [streams(0)] * 30, start=now, current=current)
    assert current == 1  # min: never below it on load alone


def test_no_scale_down_before_a_whole_stable_window_was_watched() -> None:
    policy = FunctionPolicy(WINDOWS, born=100.0)  # e.g. a gateway that just started
    policy.observe(100.0, streams(0), "capacity")
    assert policy.decide(100.0, STREAMS, current=5).direction == NONE
    policy.observe(110.0, streams(0), "capacity")
    assert policy.decide(110.0, STREAMS, current=5).desired == 1


def test_load_between_one_and_two_capacities_grows_on_the_stable_window_not_panic() -> None:
    policy = FunctionPolicy(WINDOWS, born=0.0)
    policy.observe(0.0, streams(20), "capacity")  # 20 < 2 × 14.4: no panic
    decision = policy.decide(0.0, STREAMS, current=1)
    assert not decision.panic and decision.desired == 2  # the window holds only this sample yet


def test_idle_goes_to_zero_after_zero_duration_only_when_zero_is_set() -> None:
    idle = ScaleLabels(zero=True, zero_duration=2.0)
    policy = FunctionPolicy(WINDOWS, born=0.0)
    policy.observe(0.0, streams(0, requests=5), "capacity")
    policy.observe(1.0, streams(0, requests=6), "capacity")  # a request at 1 s
    assert policy.decide(2.5, idle, current=1).desired == 1
    policy.observe(3.0, streams(0, requests=6), "capacity")
    decision = policy.decide(3.0, idle, current=1)
    assert (decision.desired, decision.direction, decision.reason) == (0, DOWN, "idle")
    assert policy.decide(3.0, ScaleLabels(zero=False, zero_duration=2.0), current=1).desired == 1


def test_an_open_stream_is_activity_even_without_new_requests() -> None:
    policy = FunctionPolicy(WINDOWS, born=0.0)
    idle = ScaleLabels(zero=True, zero_duration=2.0)
    for t in range(10):
        policy.observe(float(t), streams(1, requests=1), "capacity")
    assert policy.decide(9.0, idle, current=1).desired == 1


def test_rps_is_the_rate_of_the_requests_counter() -> None:
    rps = ScaleLabels(type="rps", target=5, max=2)
    policy = FunctionPolicy(WINDOWS, born=0.0)
    for i in range(5):
        assert policy.observe(i * 1.0, streams(0, requests=10 * i), "rps") == (10.0 if i else 0.0)
    decision = policy.decide(4.0, rps, current=1)
    assert decision.desired == 2  # ceil(10 / 4.5) = 3, clamped to max


def test_cpu_is_sized_in_millicores() -> None:
    cpu = ScaleLabels(type="cpu", target=500, proportion=1.0)
    policy = FunctionPolicy(WINDOWS, born=0.0)
    policy.observe(0.0, streams(0), "cpu", cpu_millicores=1200)
    assert policy.decide(0.0, cpu, current=1).desired == 3


def test_windows_must_nest() -> None:
    with pytest.raises(ValueError, match="panic"):
        Windows(stable=5, panic=6)


@pytest.mark.parametrize(
    ("labels", "named"),
    [
        ({"com.openfaas.scale.target": "0"}, "com.openfaas.scale.target"),
        ({"com.openfaas.scale.target": "ten"}, "com.openfaas.scale.target"),
        ({"com.openfaas.scale.type": "memory"}, "com.openfaas.scale.type"),
        ({"com.openfaas.scale.target-proportion": "0"}, "com.openfaas.scale.target-proportion"),
        ({"com.openfaas.scale.target-proportion": "1.5"}, "com.openfaas.scale.target-proportion"),
        ({"com.openfaas.scale.target-proportion": "nan"}, "com.openfaas.scale.target-proportion"),
        ({"com.openfaas.scale.zero-duration": "soon"}, "com.openfaas.scale.zero-duration"),
        ({"com.openfaas.scale.zero-duration": "0s"}, "com.openfaas.scale.zero-duration"),
    ],
)
def test_bad_label_values_name_the_label(labels: dict[str, str], named: str) -> None:
    with pytest.raises(BadRequest, match=named):
        ScaleLabels.from_labels(labels)


def test_labels_read_with_their_defaults() -> None:
    s = ScaleLabels.from_labels({})
    assert (s.min, s.max, s.target, s.type, s.proportion, s.zero, s.zero_duration) == (1, 20, 50, "capacity", 0.9, False, 900.0)
    s = ScaleLabels.from_labels({"com.openfaas.scale.type": "RPS", "com.openfaas.scale.zero-duration": "1m30s",
                                 "com.openfaas.scale.target": "16", "com.openfaas.scale.target-proportion": "0.5"})
    assert (s.type, s.zero_duration, s.target, s.per_replica) == ("rps", 90.0, 16, 8.0)
    assert ScaleLabels.from_labels({"com.openfaas.scale.min": "2", "com.openfaas.scale.max": "2"}).fixed
    # A gateway's own defaults fill what a function leaves unset.
    base = ScaleLabels(type="rps", target=5, zero_duration=30.0)
    s = ScaleLabels.from_labels({"com.openfaas.scale.target": "7"}, base=base)
    assert (s.type, s.target, s.zero_duration) == ("rps", 7, 30.0)
