from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "llm"))

from platform_fixture import Platform  # noqa: E402


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    """A fresh gateway for one test; stopped, with all its replicas, afterwards."""
    p = Platform(tmp_path / "state").start()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def shared_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """One gateway for a module's tests; each test deploys functions under its own names."""
    p = Platform(tmp_path_factory.mktemp("state")).start()
    try:
        yield p
    finally:
        p.close()
