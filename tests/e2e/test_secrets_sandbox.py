"""Secrets reach only the functions that name them, and never leak: sandboxed functions (bwrap)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from platform_fixture import Platform
from streamfaas.sandbox import bwrap_path

pytestmark = pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap (bwrap) is not usable here; .ci/run installs it")

SNOOP = """
import json, os

def handle(req):
    mine, theirs, state = os.environ["MINE"], os.environ["THEIRS"], os.environ["STATE_DIR"]
    folder = "/var/openfaas/secrets"
    out = {"listing": sorted(os.listdir(folder)), "mine": open(f"{folder}/{mine}").read()}
    attempts = [f"{folder}/{theirs}", f"{state}/secrets/{theirs}", f"{state}/run/{os.environ['OTHER_FN']}/secrets/{theirs}"]
    out["theirs"] = []
    for path in attempts:
        try:
            out["theirs"].append(open(path).read())
        except OSError as exc:
            out["theirs"].append(type(exc).__name__)
    environs = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                environs.append(open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace"))
            except OSError:
                pass
    out["environs"] = environs
    out["env"] = dict(os.environ)
    out["sees_host_tmp"] = os.path.exists(os.environ["HOST_MARKER"])
    try:
        open("/usr/streamfaas-write-test", "w")
        out["rootfs_writable"] = True
    except OSError:
        out["rootfs_writable"] = False
    print("snooped", flush=True)
    return json.dumps(out)
"""

VALUES = {"alpha-key": "alpha-SECRET-value-111", "beta-key": "beta-SECRET-value-222"}


@pytest.fixture
def sandboxed(tmp_path: Path) -> Iterator[Platform]:
    with Platform(tmp_path / "state", sandbox=True).start() as p:
        yield p


def test_functions_read_only_their_own_secrets(sandboxed: Platform, tmp_path: Path) -> None:
    p = sandboxed
    for name, value in VALUES.items():
        assert p.http.post(p.url + "/system/secrets", json={"name": name, "value": value}).status_code == 201
    handler = p.write_function(tmp_path, "snoop", SNOOP)
    marker = tmp_path / "host-marker"
    marker.touch()
    for fn, mine, theirs, other in (("alpha", "alpha-key", "beta-key", "beta"), ("beta", "beta-key", "alpha-key", "alpha")):
        p.images.build(f"{fn}:latest", "python3-flask", handler)
        body = {
            "service": fn, "image": f"{fn}:latest", "secrets": [mine],
            "envVars": {"MINE": mine, "THEIRS": theirs, "STATE_DIR": str(p.state_dir), "OTHER_FN": other, "HOST_MARKER": str(marker)},
        }
        assert p.http.post(p.url + "/system/functions", json=body).status_code == 202
    for fn in ("alpha", "beta"):
        p.wait_ready(fn)

    results = {fn: httpx.get(p.function_url(fn), timeout=30).json() for fn in ("alpha", "beta")}
    for fn, mine, theirs in (("alpha", "alpha-key", "beta-key"), ("beta", "beta-key", "alpha-key")):
        got = results[fn]
        assert got["listing"] == [mine]
        assert got["mine"] == VALUES[mine]
        assert got["theirs"] == ["FileNotFoundError"] * 3
        assert not any(VALUES[theirs] in e for e in got["environs"])
        assert not any(v in json.dumps(got["env"]) for v in VALUES.values())
        assert got["env"]["STREAMFAAS_SECRETS_DIR"] == "/var/openfaas/secrets"
        assert got["sees_host_tmp"] is False  # its own /tmp
        assert got["rootfs_writable"] is False

    # No value in the process list, the gateway's log, or any function's log.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    logs = p.log_path.read_text() + "".join(f.read_text() for f in (p.state_dir / "logs").glob("*.log"))
    assert "snooped" in logs
    for value in VALUES.values():
        assert value not in ps
        assert value not in logs


def test_private_function_needs_its_token(sandboxed: Platform, tmp_path: Path) -> None:
    p = sandboxed
    code = "from flask import request\n\ndef handle(req):\n    return request.headers.get('Authorization') or 'none'\n"
    handler = p.write_function(tmp_path, "vault", code)
    p.deploy("vault", handler, labels={"streamfaas.auth/private": "true"})
    r = httpx.get(p.function_url("vault"), timeout=30)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(p.function_url("vault"), headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    token = p.http.get(p.url + "/system/function-token/vault").json()["token"]
    r = httpx.get(p.function_url("vault"), headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200
    assert r.text == "none"  # the platform's credential is not passed on
    assert httpx.get(p.function_url("vault"), auth=("admin", p.password), timeout=30).text == "none"


def test_admin_password_never_reaches_a_public_function(sandboxed: Platform, tmp_path: Path) -> None:
    p = sandboxed
    code = "from flask import request\n\ndef handle(req):\n    return request.headers.get('Authorization') or 'none'\n"
    p.deploy("echoauth", p.write_function(tmp_path, "echoauth", code))
    assert httpx.get(p.function_url("echoauth"), auth=("admin", p.password), timeout=30).text == "none"
    assert httpx.get(p.function_url("echoauth"), headers={"Authorization": "Bearer mine"}, timeout=30).text == "Bearer mine"
