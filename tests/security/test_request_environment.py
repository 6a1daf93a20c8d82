"""What a caller's request puts in a per-request process's environment (streaming and
serializing modes, of-watchdog's Http_* variables), and nothing more:
- a NUL: bwrap reads its arguments NUL-separated from a file, so "%00--setenv%00X%00…" in the
  path (Http_Path) or a NUL in an image's Env split one value into arguments of the caller's
  choosing (binds of the state folder, LD_PRELOAD): an anonymous caller read the admin password;
- a ``Proxy:`` header: as Http_Proxy, Python's HTTP clients took it for the function's own
  proxy ("httpoxy"), so a caller read and answered every http:// call the function made;
- an error event after a process's unfinished event is an event of its own.
"""

from __future__ import annotations

import pytest

from platform_fixture import Platform
from streamfaas.errors import DeployError
from streamfaas.provider import oci_rootfs
from streamfaas.sandbox import _args_fd


@pytest.fixture(scope="module")
def env_printer(shared_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("env-printer")
    shared_platform.images.build("nul-env:latest", "python3-flask", folder)
    body = {"service": "nul-env", "image": "nul-env:latest", "envProcess": "env", "envVars": {"mode": "streaming"}}
    r = shared_platform.http.post(f"{shared_platform.url}/system/functions", json=body)
    assert r.status_code == 202, r.text
    shared_platform.wait_ready("nul-env")
    return "nul-env"


def test_the_per_request_process_sees_its_path(shared_platform: Platform, env_printer: str) -> None:
    r = shared_platform.http.get(shared_platform.function_url(env_printer) + "/some/path")
    assert r.status_code == 200 and "Http_Path=/some/path" in r.text.splitlines()


@pytest.mark.parametrize("prefix", ["/function/", "/async-function/"])
def test_a_nul_in_the_path_is_refused_never_an_argument(shared_platform: Platform, env_printer: str, prefix: str) -> None:
    path = "/x%00--setenv%00INJECTED%00by-anonymous%00--ro-bind%00/%00/tmp/host"
    r = shared_platform.http.post(f"{shared_platform.url}{prefix}{env_printer}{path}", content=b"")
    if prefix == "/function/":
        assert r.status_code == 400, r.text
        assert r.text.strip() == "the request path holds a NUL character (%00)"
    else:
        assert r.status_code in (202, 400), r.text  # queued, then refused by the watchdog like a sync call
    assert "INJECTED" not in r.text


def test_a_proxy_header_never_becomes_the_functions_proxy(shared_platform: Platform, env_printer: str) -> None:
    r = shared_platform.http.get(shared_platform.function_url(env_printer), headers={"Proxy": "http://127.0.0.1:9/", "X-Other": "kept"})
    assert r.status_code == 200
    names = {line.split("=", 1)[0].lower() for line in r.text.splitlines()}
    assert "http_x_other" in names  # headers do arrive, as of-watchdog sets them
    assert not {n for n in names if n.endswith("_proxy")}, names


def test_an_error_after_an_unfinished_event_ends_that_event_first(shared_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("half-event")
    shared_platform.images.build("half-event:latest", "python3-flask", folder)
    body = {"service": "half-event", "image": "half-event:latest", "envProcess": "sh -c \"printf 'data: partial'; exit 3\"",
            "envVars": {"mode": "streaming", "content_type": "text/event-stream"}}
    assert shared_platform.http.post(f"{shared_platform.url}/system/functions", json=body).status_code == 202
    shared_platform.wait_ready("half-event")
    r = shared_platform.http.get(shared_platform.function_url("half-event"))
    assert "data: partial\n\nevent: error\n" in r.text, r.text


def test_no_sandbox_argument_may_hold_a_nul() -> None:
    with pytest.raises(ValueError, match="NUL") as caught:
        _args_fd(["--setenv", "A", "ok\0--ro-bind\0/\0/host"])
    assert "ro-bind" not in str(caught.value)


def test_an_images_config_with_a_nul_is_refused() -> None:
    for strings in (["X=y\0--ro-bind\0/\0/host"], ["sh\0--bind"]):  # Env; Cmd or Entrypoint
        with pytest.raises(DeployError, match="NUL"):
            oci_rootfs._strings(strings)
