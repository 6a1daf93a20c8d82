from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Nothing is fetched mid-run: a function's requirements must come from the platform's venv or
# the operator's wheelhouse (PIP_FIND_LINKS; pip, run by the gateway for a function's venv, is
# given these two settings and no other of the gateway's environment).
os.environ["PIP_NO_INDEX"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "llm"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "queue"))

from queue_fixture import CallbackReceiver  # noqa: E402

from platform_fixture import Platform, Signals  # noqa: E402


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    """A fresh gateway for one test; stopped, with all its replicas, afterwards."""
    with Platform(tmp_path / "state").start() as p:
        yield p


@pytest.fixture(scope="module")
def shared_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """One gateway for a module's tests; each test deploys functions under its own names. Its async
    callbacks may reach the tests' receivers on 127.0.0.1."""
    with Platform(tmp_path_factory.mktemp("state"), ("--callback-allow", "127.0.0.1/32")).start() as p:
        yield p


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    """An HTTP server that records the async callbacks it gets."""
    r = CallbackReceiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def signals() -> Iterator[Signals]:
    """An HTTP server through which a test and its (sandboxed) functions synchronise."""
    s = Signals()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def shared_signals() -> Iterator[Signals]:
    """``signals`` for a module's functions (deployed once on ``shared_platform`` or the like)."""
    s = Signals()
    try:
        yield s
    finally:
        s.close()


# ---- no silent skips in CI ----------------------------------------------------------------------
# Under CI=true a missing prerequisite fails the run instead of skipping its tests. A skip that
# is expected even in CI must be listed here, with its reason.
CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ALLOWED_CI_SKIPS: dict[str, str] = {
    "test_secrets_of_a_root_platform_belong_to_the_function_uid": "only when the tests do not run as root",
}


def _prerequisites() -> list[str]:
    from streamfaas.sandbox import bwrap_path

    missing = []
    if shutil.which("nats-server") is None:
        missing.append("nats-server (apt-get install nats-server)")
    if not Path("/usr/bin/chromium").exists():
        missing.append("/usr/bin/chromium (apt-get install chromium chromium-driver)")
    if bwrap_path() is None:
        missing.append("a working bwrap (apt-get install bubblewrap; user namespaces allowed)")
    # tests/oci: OCI images built, pushed to a loopback registry and run (the base image comes
    # from scripts/oci-base-image.sh, cached).
    missing += [f"{tool} (apt-get install buildah skopeo docker-registry mmdebstrap)"
                for tool in ("buildah", "skopeo", "docker-registry", "mmdebstrap") if shutil.which(tool) is None]
    # tests/e2e/test_local_oci_images.py: the local provider unpacks OCI images with umoci, and
    # its test image is a FROM-scratch busybox.
    if shutil.which("umoci") is None:
        missing.append("umoci (apt-get install umoci)")
    if not Path("/bin/busybox").is_file():
        missing.append("/bin/busybox (apt-get install busybox-static)")
    return missing


def pytest_sessionstart(session: pytest.Session) -> None:
    if CI:
        missing = _prerequisites()
        if missing:
            raise pytest.UsageError("CI=true but prerequisites are missing: " + "; ".join(missing))


_skipped_in_ci: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        name = report.nodeid.split("::")[-1].split("[")[0]
        if name not in ALLOWED_CI_SKIPS:
            _skipped_in_ci.append(f"{report.nodeid}: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if CI and _skipped_in_ci:
        print("\nCI=true: these tests were skipped, which CI does not allow:", file=sys.stderr)
        for line in _skipped_in_ci:
            print("  " + line, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
