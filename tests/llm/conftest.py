from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_server import API_KEY, LLMServer  # noqa: E402


@pytest.fixture(scope="session")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMServer]:
    """One open model server (2 slots) shared by the tests that only read from it."""
    server = LLMServer(tmp_path_factory.mktemp("llm")).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def guarded_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMServer]:
    """A model server with an API key, one slot and no queue: the second request gets 429."""
    workdir = tmp_path_factory.mktemp("llm-guarded")
    key_file = workdir / "api-key"
    key_file.write_text(API_KEY + "\n")
    server = LLMServer(
        workdir, "--api-key-file", str(key_file), "--parallel", "1", "--queue-size", "0"
    ).start()
    try:
        yield server
    finally:
        server.close()
