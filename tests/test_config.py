from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfaas.config import WatchdogConfig, parse_duration
from streamfaas.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200), ("1.5s", 1.5), ("10", 10), ("0", 0), ("1h2m3s", 3723)],
)
def test_parse_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ten", "5x", "1m30", "-5s", "-3", "s", "1s 2s"])
def test_bad_durations_name_the_setting(text: str) -> None:
    with pytest.raises(ConfigError, match="exec_timeout"):
        parse_duration(text, name="exec_timeout")


@given(st.text(max_size=20))
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    try:
        assert parse_duration(text) >= 0
    except ConfigError:
        pass


def test_watchdog_settings_use_openfaas_names() -> None:
    config = WatchdogConfig.from_env(
        {"fprocess": "python index.py", "exec_timeout": "1m", "read_timeout": "5s", "write_timeout": "7s",
         "buffer_body": "true", "max_inflight": "3", "healthcheck_interval": "2s", "upstream_url": "http://127.0.0.1:1"}
    )
    assert (config.exec_timeout, config.read_timeout, config.write_timeout) == (60, 5, 7)
    assert config.buffer_body and config.max_inflight == 3 and config.healthcheck_interval == 2
    assert config.upstream_url == "http://127.0.0.1:1"


@pytest.mark.parametrize(
    "url", ["https://127.0.0.1:5000", "127.0.0.1:5000", "http://", "http://h:99999", "http://h:x", "unix:/tmp/s", "http://u:p@h:1"]
)
def test_watchdog_upstream_url_must_be_plain_http(url: str) -> None:
    with pytest.raises(ConfigError, match="upstream_url: expected an http:// address"):
        WatchdogConfig.from_env({"upstream_url": url})


def test_watchdog_upstream_url_may_have_a_path_prefix() -> None:
    assert WatchdogConfig.from_env({"upstream_url": "http://[::1]:5000/api/"}).upstream_url == "http://[::1]:5000/api/"


def test_watchdog_rejects_bad_numbers() -> None:
    with pytest.raises(ConfigError, match="max_inflight"):
        WatchdogConfig.from_env({"max_inflight": "many"})
