from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from queue_fixture import NATS_SERVER, NatsServer  # noqa: E402


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A JetStream server for a module's tests (each uses its own stream); skipped only where
    nats-server is missing."""
    if NATS_SERVER is None:
        pytest.skip("nats-server is not on PATH (apt-get install nats-server)")
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["sqlite", "nats"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def nats_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """The NATS server's URL when the test runs on the nats backend."""
    if backend != "nats":
        return None
    server: NatsServer = request.getfixturevalue("nats_server")
    return server.url
