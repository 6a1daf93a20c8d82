"""``X-Call-Id`` from a caller: kept when it could be an id, replaced when not (as on
``/async-function``), so a function's logs never take 8 KiB of whatever a caller sent."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from platform_fixture import Platform

ECHO_ID = "from flask import request\n\ndef handle(req):\n    return request.headers.get('X-Call-Id', '')\n"


@pytest.mark.parametrize(("sent", "kept"), [("job-42", True), ("x" * 200, True), ("x" * 201, False), ("x" * 7000, False)])
def test_a_callers_call_id_is_kept_only_if_it_could_be_one(shared_platform: Platform, tmp_path: Path, sent: str, kept: bool) -> None:
    if "echo-call-id" not in [f["name"] for f in shared_platform.http.get(shared_platform.url + "/system/functions").json()]:
        shared_platform.deploy("echo-call-id", shared_platform.write_function(tmp_path, "echo-call-id", ECHO_ID))
    r = httpx.post(shared_platform.function_url("echo-call-id"), content=b"x", headers={"X-Call-Id": sent}, timeout=30)
    assert r.status_code == 200
    assert r.text == r.headers["X-Call-Id"]  # what the function saw is what the caller is told
    if kept:
        assert r.text == sent
    else:
        assert str(uuid.UUID(r.text)) == r.text
