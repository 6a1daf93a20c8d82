"""What is public, ``--metrics-auth``, and the rules of ``--auth none`` (its requests are replayed
in tests/compat/test_airflow_hook.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from platform_fixture import Platform
from streamfaas.cli import main
from streamfaas.cli.platform import gateway
from streamfaas.config import GatewayConfig
from streamfaas.errors import ConfigError


def test_metrics_and_openapi_are_public_by_default(shared_platform: Platform) -> None:
    for path in ("/metrics", "/openapi.json", "/healthz"):
        assert httpx.get(shared_platform.url + path, timeout=30).status_code == 200, path
    assert httpx.get(shared_platform.url + "/system/functions", timeout=30).status_code == 401


@pytest.fixture(scope="module")
def metrics_auth_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = Platform(tmp_path_factory.mktemp("metrics-auth") / "state", ("--metrics-auth",)).start()
    try:
        yield p
    finally:
        p.close()


def test_metrics_auth_puts_metrics_behind_the_admins_basic_auth(metrics_auth_platform: Platform) -> None:
    p = metrics_auth_platform
    r = httpx.get(p.url + "/metrics", timeout=30)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic ")
    assert httpx.get(p.url + "/metrics", auth=("admin", "wrong"), timeout=30).status_code == 401
    r = httpx.get(p.url + "/metrics", auth=("admin", p.password), timeout=30)
    assert r.status_code == 200 and "gateway_function_invocation" in r.text
    assert httpx.get(p.url + "/openapi.json", timeout=30).status_code == 200  # still public


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_auth_none_is_allowed_on_loopback(host: str, tmp_path: Path) -> None:
    assert not GatewayConfig(auth=False, host=host, state_dir=tmp_path).auth


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "192.168.1.10", "gateway.example"])
def test_auth_none_on_a_reachable_host_needs_the_explicit_flag(host: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--i-know-no-auth-is-public"):
        GatewayConfig(auth=False, host=host, state_dir=tmp_path)
    assert GatewayConfig(auth=False, host=host, state_dir=tmp_path, public_without_auth=True).public_without_auth


def test_auth_takes_basic_or_none_and_no_auth_stays_an_alias() -> None:
    def auth_of(*args: str) -> tuple[object, object]:
        with gateway.make_context("gateway", list(args)) as ctx:
            return ctx.params["auth_mode"], ctx.params["no_auth"]

    assert auth_of() == (None, False)
    assert auth_of("--auth") == ("basic", False)
    assert auth_of("--auth", "none") == ("none", False)
    assert auth_of("--no-auth") == (None, True)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--auth", "basic", "--no-auth"], "contradict"),
        (["--auth", "none", "--metrics-auth"], "--metrics-auth needs --auth basic"),
        (["--no-auth", "--host", "0.0.0.0"], "--i-know-no-auth-is-public"),
    ],
)
def test_auth_flags_that_do_not_go_together_exit_2(
    args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["--state-dir", str(tmp_path), "gateway", "--port", "0", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and err.count("\n") == 1
