"""The queue's settings: sizes, validation, and the flags that reach them."""

from __future__ import annotations

import subprocess

import pytest

from platform_fixture import streamfaas_cmd
from streamfaas.config import QueueConfig, parse_size
from streamfaas.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1048576), ("1MiB", 1048576), ("512KiB", 524288), ("1MB", 1_000_000), ("2k", 2048), (" 3 b ", 3)],
)
def test_sizes_parse_with_binary_and_decimal_units(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_bad_size_and_bad_backend_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="--max-async-body: invalid size '1 lots'"):
        parse_size("1 lots", name="--max-async-body")
    with pytest.raises(ConfigError, match="expected sqlite or nats"):
        QueueConfig(backend="redis")


def test_bad_queue_flag_is_one_line_and_exit_2() -> None:
    out = subprocess.run(streamfaas_cmd("queue-worker", "--queue", "redis"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Invalid value for '--queue'" in out.stderr
    assert "Traceback" not in out.stderr


def test_worker_without_a_nats_server_fails_clearly() -> None:
    out = subprocess.run(streamfaas_cmd("queue-worker", "--queue", "nats", "--nats-url", "nats://127.0.0.1:1"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "cannot connect to NATS at nats://127.0.0.1:1" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", ["queue-worker", "gateway"])
def test_bad_callback_allow_network_is_one_line_and_exit_2(command: str) -> None:
    out = subprocess.run(streamfaas_cmd(command, "--callback-allow", "10.0.0.1/8"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Invalid value for '--callback-allow'" in out.stderr and "10.0.0.1/8" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
