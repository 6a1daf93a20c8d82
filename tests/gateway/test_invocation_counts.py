"""Invocation counts outlive the gateway: saved in the state directory now and then and on
shutdown, never per request."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx

from platform_fixture import Platform, wait_for

HELLO = "def handle(req):\n    return 'hello'\n"


def test_invocation_counts_survive_a_gateway_restart(platform: Platform, tmp_path: Path) -> None:
    platform.deploy("counted", platform.write_function(tmp_path, "counted", HELLO))
    for _ in range(3):
        assert httpx.post(platform.function_url("counted"), content=b"x", timeout=30).status_code == 200
    assert platform.status("counted")["invocationCount"] == 3

    platform.stop()  # SIGTERM: the counts are saved on the way out
    assert json.loads((platform.state_dir / "invocations.json").read_text()) == {"counted": 3}
    platform.start()
    platform.wait_ready("counted")
    assert platform.status("counted")["invocationCount"] == 3
    assert httpx.post(platform.function_url("counted"), content=b"x", timeout=30).status_code == 200
    assert platform.status("counted")["invocationCount"] == 4


def test_a_removed_functions_count_is_not_restored(platform: Platform, tmp_path: Path) -> None:
    folder = platform.write_function(tmp_path, "gone", HELLO)
    platform.deploy("gone", folder)
    assert httpx.post(platform.function_url("gone"), content=b"x", timeout=30).status_code == 200
    r = platform.http.request("DELETE", f"{platform.url}/system/functions", json={"functionName": "gone"})
    assert r.status_code == 202
    platform.stop()
    platform.start()
    platform.deploy("gone", folder)
    assert platform.status("gone")["invocationCount"] == 0


def test_counts_are_saved_every_10s_so_a_killed_gateway_keeps_them(platform: Platform, tmp_path: Path) -> None:
    platform.deploy("killed", platform.write_function(tmp_path, "killed", "def handle(req):\n    return 'ok'\n"))
    for _ in range(2):
        assert httpx.post(platform.function_url("killed"), content=b"x", timeout=30).status_code == 200
    saved = platform.state_dir / "invocations.json"
    # Saved while the gateway runs (every 10 s when they changed), not only at shutdown …
    wait_for(lambda: saved.exists() and json.loads(saved.read_text()) == {"killed": 2}, timeout=15, what="the periodic save")
    platform.stop(signal.SIGKILL)  # … so a SIGKILL, which runs no shutdown, keeps them.
    platform.start()
    platform.wait_ready("killed")
    assert platform.status("killed")["invocationCount"] == 2
