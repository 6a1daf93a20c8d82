"""The scaling labels the certifier checks (``com.openfaas.scale.min``, ``.max``, ``.zero``) and the
autoscaler reads (``.target``, ``.type``, ``.target-proportion``, ``.zero-duration``), and
``POST /system/scale-function`` while a request waits for a function to start (the certifier's
Test_ScaleFromZeroDuringInvoke, and scaling in the middle of that wait)."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from platform_fixture import Platform, Signals, streamfaas_cmd, wait_for

HELLO = "def handle(req):\n    return 'hello'\n"
# Each start of a replica says so, then waits for the test to let it finish starting: the
# handler is imported before the function server answers, so the replica is not ready till then.
SLOW_START = """
import os
import urllib.request

_NAME = os.environ["NAME"]
urllib.request.urlopen(urllib.request.Request(os.environ["SIGNALS"] + f"/mark/{_NAME}-starting", data=b""), timeout=30).read()
urllib.request.urlopen(os.environ["SIGNALS"] + f"/wait/{_NAME}-go?timeout=60", timeout=70).read()

def handle(req):
    return "served"
"""
MIN = "com.openfaas.scale.min"
MAX = "com.openfaas.scale.max"
ZERO = "com.openfaas.scale.zero"


def scale(platform: Platform, name: str, replicas: int) -> None:
    r = platform.http.post(f"{platform.url}/system/scale-function/{name}", json={"serviceName": name, "replicas": replicas})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(
    ("labels", "named"),
    [
        ({MIN: "two"}, MIN),
        ({MIN: "-1"}, MIN),
        ({MIN: "1.5"}, MIN),
        ({MAX: "0"}, MAX),
        ({MAX: "lots"}, MAX),
        ({MAX: "1001"}, MAX),
        ({MIN: "3", MAX: "2"}, MIN),
        ({ZERO: "maybe"}, ZERO),
        ({"com.openfaas.scale.target": "0"}, "com.openfaas.scale.target"),
        ({"com.openfaas.scale.type": "memory"}, "com.openfaas.scale.type"),
        ({"com.openfaas.scale.target-proportion": "2"}, "com.openfaas.scale.target-proportion"),
        ({"com.openfaas.scale.zero-duration": "later"}, "com.openfaas.scale.zero-duration"),
    ],
)
def test_an_invalid_scaling_label_is_a_400_naming_it(shared_platform: Platform, labels: dict[str, str], named: str) -> None:
    body = {"service": "badlabels", "image": "badlabels:latest", "labels": labels}
    r = shared_platform.http.post(f"{shared_platform.url}/system/functions", json=body)
    assert r.status_code == 400, r.text
    assert named in r.text and r.text.count("\n") == 1
    assert shared_platform.http.get(f"{shared_platform.url}/system/function/badlabels").status_code == 404


def test_min_sets_replicas_max_clamps_scaling_and_a_request_wakes_it_to_min(shared_platform: Platform, tmp_path: Path) -> None:
    name = "bounded"
    shared_platform.deploy(name, shared_platform.write_function(tmp_path, name, HELLO),
                           labels={MIN: "2", MAX: "3", ZERO: "true"})
    status = shared_platform.status(name)
    assert status["replicas"] == 2  # the certifier's Test_ScaleMinimum
    assert status["labels"][ZERO] == "true"

    scale(shared_platform, name, 5)
    assert shared_platform.status(name)["replicas"] == 3
    proc = subprocess.run(streamfaas_cmd("scale", name, "--replicas", "7"), env=shared_platform.env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"scaled {name} to 3 (its com.openfaas.scale.max; 7 were asked for)" in proc.stderr

    scale(shared_platform, name, 0)  # below min, by hand: allowed, as on OpenFaaS
    assert shared_platform.status(name)["replicas"] == 0
    r = httpx.post(shared_platform.function_url(name), content=b"x", timeout=60)
    assert r.status_code == 200 and r.text == "hello"
    assert shared_platform.status(name)["replicas"] == 2  # scaled from zero to min, not to 1


def test_scale_from_zero_during_invoke(shared_platform: Platform, tmp_path: Path) -> None:
    # The certifier: wait for a replica, scale to 0, read replicas 0, invoke → 200.
    name = "fromzero"
    shared_platform.deploy(name, shared_platform.write_function(tmp_path, name, HELLO))
    scale(shared_platform, name, 0)
    status = shared_platform.status(name)
    assert status["replicas"] == 0 and status["availableReplicas"] == 0
    r = httpx.post(f"{shared_platform.url}/function/{name}.openfaas-fn", content=b"x", timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("replicas", [2, 0])
def test_scaling_while_a_request_waits_for_a_start_still_serves_it(
    shared_platform: Platform, signals: Signals, tmp_path: Path, replicas: int,
) -> None:
    name = f"waiting{replicas}"
    folder = shared_platform.write_function(tmp_path, name, SLOW_START)
    # min 0: deployed without replicas, so the request below is the one that starts it.
    shared_platform.deploy(name, folder, env={"SIGNALS": signals.url, "NAME": name}, labels={MIN: "0"}, wait=False)
    assert shared_platform.status(name)["replicas"] == 0
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(httpx.post, shared_platform.function_url(name), content=b"x", timeout=90)
        signals.wait_marks(f"{name}-starting", 1, timeout=60)  # the request is waiting on this start
        scale(shared_platform, name, replicas)
        # Scaled up: the second replica starts. Scaled to zero: the starting replica is
        # stopped, and the waiting request starts the function again, as a new one would.
        signals.wait_marks(f"{name}-starting", 2, timeout=60)
        assert not waiting.done()
        signals.open(f"{name}-go")
        r = waiting.result(timeout=90)
    assert r.status_code == 200 and r.text == "served"
    expected = replicas or 1
    wait_for(lambda: shared_platform.status(name)["availableReplicas"] == expected, 30, what=f"{expected} ready replicas")
    assert shared_platform.status(name)["replicas"] == expected
