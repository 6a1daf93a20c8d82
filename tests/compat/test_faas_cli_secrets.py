"""``faas-cli secret create|update|remove`` and the certifier's secret CRUD: /system/secrets."""

from __future__ import annotations

import httpx

from go_wire import (
    DEFAULT_NAMESPACE,
    SECRET_CREATE_OK,
    SECRET_REMOVE_OK,
    SECRET_UPDATE_OK,
    go_json,
    secret_json,
)
from platform_fixture import Platform

JSON = {"Content-Type": "application/json", "User-Agent": "faas-cli/dev"}


def _send(platform: Platform, method: str, body: bytes) -> httpx.Response:
    return platform.http.request(method, f"{platform.url}/system/secrets", content=body, headers=JSON)


def _names(platform: Platform) -> list[str]:
    r = platform.http.get(f"{platform.url}/system/secrets", params={"namespace": DEFAULT_NAMESPACE})
    assert r.status_code == 200
    return [s["name"] for s in r.json()]


def test_create_from_file_sends_value_and_raw_value_and_the_raw_bytes_win(shared_platform: Platform) -> None:
    # `faas-cli secret create NAME --from-file F` sets both: RawValue = the bytes,
    # Value = string(bytes), which JSON turns into U+FFFD wherever the bytes are not UTF-8.
    data = b"\x00\xffkey material\n"
    body = secret_json("from-file", value=data.decode(errors="replace"), raw=data)
    r = _send(shared_platform, "POST", body)
    assert r.status_code in SECRET_CREATE_OK, r.text
    assert (shared_platform.state_dir / "secrets" / "from-file").read_bytes() == data


def test_create_from_literal_and_update_from_raw_value(shared_platform: Platform) -> None:
    r = _send(shared_platform, "POST", secret_json("literal", value="v1", namespace=DEFAULT_NAMESPACE))
    assert r.status_code in SECRET_CREATE_OK, r.text
    r = _send(shared_platform, "PUT", secret_json("literal", raw=b"v2-raw", namespace=DEFAULT_NAMESPACE))
    assert r.status_code in SECRET_UPDATE_OK, r.text
    assert (shared_platform.state_dir / "secrets" / "literal").read_bytes() == b"v2-raw"


def test_remove_answers_a_status_faas_cli_takes_as_success(shared_platform: Platform) -> None:
    assert _send(shared_platform, "POST", secret_json("doomed", value="x")).status_code in SECRET_CREATE_OK
    # faas-cli's RemoveSecret marshals a types.Secret holding only the name (and namespace).
    r = _send(shared_platform, "DELETE", go_json({"name": "doomed", "namespace": DEFAULT_NAMESPACE}))
    assert r.status_code in SECRET_REMOVE_OK, r.text
    assert "doomed" not in _names(shared_platform)
    r = _send(shared_platform, "DELETE", go_json({"name": "doomed"}))
    assert r.status_code == 404  # faas-cli: "unable to find secret"
