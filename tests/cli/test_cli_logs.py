"""``streamfaas logs``: --since takes an RFC 3339 time or a duration, as faas-cli's does."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import httpx

from platform_fixture import Platform, streamfaas_cmd

PRINTER = "def handle(req):\n    print(req, flush=True)\n    return 'ok'\n"


def logs(platform: Platform | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = platform.env() if platform else None
    proc = subprocess.run(streamfaas_cmd("logs", *args), capture_output=True, env=env, timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def test_logs_since_takes_a_duration_or_a_time(platform: Platform, tmp_path: Path) -> None:
    platform.deploy("printer", platform.write_function(tmp_path, "printer", PRINTER))
    assert httpx.post(platform.function_url("printer"), content=b"line-one", timeout=30).status_code == 200
    for since in ("10m", "1h30m", "2000-01-01T00:00:00Z"):
        r = logs(platform, "printer", "--since", since)
        assert r.returncode == 0, r.stderr
        assert "stdout: line-one" in r.stdout
        # Each line: an RFC 3339 time, the instance, the text.
        stamp, instance, _ = r.stdout.splitlines()[0].split(" ", 2)
        dt.datetime.fromisoformat(stamp)
        assert instance
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat(timespec="seconds")
    assert logs(platform, "printer", "--since", later).stdout == ""


def test_logs_since_rejects_what_is_neither() -> None:
    r = logs(None, "printer", "--since", "yesterday")
    assert r.returncode == 2
    assert "RFC 3339" in r.stderr and "duration" in r.stderr
