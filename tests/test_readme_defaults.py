"""Defaults and small guarantees the README states, read from the code users run."""

from __future__ import annotations

import base64
import hmac
from pathlib import Path
from typing import Any

import click
import pytest

from streamfaas.cli import cli
from streamfaas.config import default_state_dir
from streamfaas.gateway import auth
from streamfaas.stack import load_stack

REPO = Path(__file__).resolve().parent.parent

QUEUE_DEFAULTS: dict[str, object] = {
    "--queue": "sqlite", "--nats-stream": "STREAMFAAS_ASYNC", "--queue-concurrency": 8, "--queue-max-retries": 5,
    "--queue-backoff": "1s", "--queue-backoff-max": "1m", "--queue-lease": "30s", "--queue-drain-timeout": "30s",
    "--queue-invoke-timeout": "10m", "--queue-callback-timeout": "30s", "--callback-allow": (),
}
DOCUMENTED: dict[str, dict[str, object]] = {
    "gateway": {"--port": 8080, "--host": "127.0.0.1", "--header-timeout": "10s", "--keepalive-timeout": "75s",
                "--max-async-body": "1MiB", "--admit-per-turn": 1, "--queue-worker": True, "--sandbox": True, **QUEUE_DEFAULTS},
    "queue-worker": QUEUE_DEFAULTS,
    "deploy": {"--timeout": "2m", "--wait": True},
    "up": {"--timeout": "2m", "--wait": True},
    "llm": {"--port": 8000, "--parallel": 2, "--queue-size": 8, "--threads": 0},  # 0: CPUs - 1
}


def _option(command: click.Command, flag: str) -> click.Option:
    for param in command.params:
        if isinstance(param, click.Option) and flag in (*param.opts, *param.secondary_opts):
            return param
    raise AssertionError(f"{command.name} has no {flag}")


@pytest.mark.parametrize("command", sorted(DOCUMENTED))
def test_cli_defaults_are_the_documented_ones(command: str) -> None:
    group = cli
    assert isinstance(group, click.Group)
    found = group.commands[command]
    for flag, default in DOCUMENTED[command].items():
        assert _option(found, flag).default == default, (command, flag)


def test_llm_threads_default_leaves_one_cpu_to_the_platform() -> None:
    from streamfaas.llm import _engine

    # --threads 0 (the default) becomes CPUs - 1 where the engine starts.
    assert "settings.threads or max(1, (os.cpu_count() or 2) - 1)" in Path(_engine.__file__).read_text()


def test_state_dir_defaults_to_local_share(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert default_state_dir() == tmp_path / ".local" / "share" / "streamfaas"


def test_credentials_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # auth.py calls hmac.compare_digest
    creds = auth.Credentials("admin", "s3cret")
    header = "Basic " + base64.b64encode(b"admin:wrong").decode()
    assert not creds.matches(header)
    assert (b"wrong", b"s3cret") in calls and (b"admin", b"admin") in calls  # both parts, always
    calls.clear()
    assert auth.function_token_matches("Bearer tok", "tok")
    assert calls == [(b"tok", b"tok")]


def test_examples_stack_points_chat_at_llm_url_and_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_URL", raising=False)
    monkeypatch.delenv("LLM_MODEL", raising=False)
    default = load_stack(REPO / "examples" / "stack.yaml").functions["chat"].environment
    assert default["OPENAI_BASE_URL"] == "http://127.0.0.1:8000/v1"
    monkeypatch.setenv("LLM_URL", "https://api.openai.com/v1")
    monkeypatch.setenv("LLM_MODEL", "gpt-4o-mini")
    chosen = load_stack(REPO / "examples" / "stack.yaml").functions["chat"].environment
    assert (chosen["OPENAI_BASE_URL"], chosen["OPENAI_MODEL"]) == ("https://api.openai.com/v1", "gpt-4o-mini")


def test_function_settings_defaults_are_the_documented_ones() -> None:
    from streamfaas.config import WatchdogConfig
    from streamfaas.provider.models import MAX_REPLICAS

    c = WatchdogConfig.from_env({"fprocess": "python index.py"})
    assert (c.exec_timeout, c.idle_timeout, c.write_timeout, c.read_timeout) == (600, 120, 600, 60)
    assert (c.max_body, c.buffer_body, c.max_inflight, c.threads) == (10 * 1024 * 1024, False, 0, 64)
    assert (c.drain_timeout, c.healthcheck_interval, c.mode, c.content_type) == (30, 5, "http", "application/octet-stream")
    assert MAX_REPLICAS == 1000  # com.openfaas.scale.max's default
