"""/healthz: a plain ``OK`` for probes, and on request how many streams the gateway can hold."""

from __future__ import annotations

import httpx

from platform_fixture import Platform


def test_healthz_body_stays_ok_for_probes(shared_platform: Platform) -> None:
    r = httpx.get(shared_platform.url + "/healthz")
    assert r.status_code == 200 and r.text == "OK\n"


def test_verbose_healthz_says_how_many_streams_fit(shared_platform: Platform) -> None:
    body = httpx.get(shared_platform.url + "/healthz", params={"verbose": "1"}).json()
    assert body["status"] == "ok"
    # The soft limit was raised to the hard one at start; every stream holds two descriptors.
    assert shared_platform.proc is not None
    with open(f"/proc/{shared_platform.proc.pid}/limits") as f:
        soft, hard = next(ln for ln in f if ln.startswith("Max open files")).split()[3:5]
    limit = int(soft)
    assert soft == hard and body["open_files_limit"] == limit
    assert 0 < body["open_files"] < limit
    assert body["streams_max"] == (limit - 64) // 2


def test_start_up_log_says_how_many_streams_fit(shared_platform: Platform) -> None:
    body = httpx.get(shared_platform.url + "/healthz", params={"verbose": "1"}).json()
    assert f"about {body['streams_max']:,} concurrent streams" in shared_platform.log_path.read_text()
