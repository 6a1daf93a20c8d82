"""Global options after the subcommand, as faas-cli takes its flags anywhere."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from platform_fixture import Platform, streamfaas_cmd


def _env(platform: Platform, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"STREAMFAAS_STATE_DIR", "OPENFAAS_CONFIG"}}
    # No saved login: the admin password can come only from the state directory named.
    return {**env, "OPENFAAS_URL": platform.url, "HOME": str(home), "XDG_DATA_HOME": str(home / "data")}


def test_state_dir_after_the_subcommand_is_accepted(shared_platform: Platform, tmp_path: Path) -> None:
    env = _env(shared_platform, tmp_path)
    after = subprocess.run(streamfaas_cmd("list", "--state-dir", str(shared_platform.state_dir)), env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert after.returncode == 0, after.stderr
    assert after.stdout.startswith("Function")
    before = subprocess.run(streamfaas_cmd("--state-dir", str(shared_platform.state_dir), "list"), env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert (before.returncode, before.stdout) == (0, after.stdout)
    # Without it, the CLI has no password for this gateway: the option above was what counted.
    without = subprocess.run(streamfaas_cmd("list"), env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=60)
    assert without.returncode == 1 and "unauthorized" in without.stderr


def test_state_dir_after_a_nested_subcommand_is_accepted(shared_platform: Platform, tmp_path: Path) -> None:
    proc = subprocess.run(streamfaas_cmd("secret", "list", "--state-dir", str(shared_platform.state_dir)),
                          env=_env(shared_platform, tmp_path), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
