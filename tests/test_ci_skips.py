"""tests/conftest.py's CI rules, run on a throwaway test file in a nested pytest: under CI=true a
skip not on the allow-list, or a missing prerequisite, fails the run; locally a skip is a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CONFTEST = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("suite_conftest", {str(TESTS / "conftest.py")!r})
suite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite)
suite._prerequisites = lambda: {{MISSING}}
pytest_sessionstart = suite.pytest_sessionstart
pytest_runtest_logreport = suite.pytest_runtest_logreport
pytest_sessionfinish = suite.pytest_sessionfinish
"""

SKIPPING = """
import pytest

def test_plain_skip():
    pytest.skip("no reason good enough for CI")

def test_secrets_of_a_root_platform_belong_to_the_function_uid():
    pytest.skip("allowed: only when the tests do not run as root")

def test_passes():
    pass
"""


def _run(tmp_path: Path, tests: str, *, ci: bool, missing: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST.replace("{MISSING}", repr(missing or [])))
    (tmp_path / "test_sample.py").write_text(tests)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_skip_fails_the_run_under_ci(tmp_path: Path) -> None:
    r = _run(tmp_path, SKIPPING, ci=True)
    assert r.returncode == pytest.ExitCode.TESTS_FAILED, r.stdout + r.stderr
    assert "test_plain_skip: " in r.stderr and "no reason good enough for CI" in r.stderr
    assert "test_secrets_of_a_root_platform_belong_to_the_function_uid" not in r.stderr  # on the allow-list


def test_allowed_skips_pass_under_ci(tmp_path: Path) -> None:
    allowed_only = SKIPPING.replace("def test_plain_skip():\n    pytest.skip(\"no reason good enough for CI\")\n", "")
    r = _run(tmp_path, allowed_only, ci=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_skip_is_only_a_skip_outside_ci(tmp_path: Path) -> None:
    r = _run(tmp_path, SKIPPING, ci=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 skipped" in r.stdout


def test_a_missing_prerequisite_fails_the_run_under_ci(tmp_path: Path) -> None:
    r = _run(tmp_path, SKIPPING, ci=True, missing=["nats-server (apt-get install nats-server)"])
    assert r.returncode == pytest.ExitCode.USAGE_ERROR, r.stdout + r.stderr
    assert "CI=true but prerequisites are missing: nats-server" in r.stderr
