"""`gateway --no-sandbox`: functions run as the gateway's user with its rights (README: deploy only
trusted code then), but the platform still says so, hands each function only its own secrets,
keeps their values out of environments, the process list and the logs, and passes the admin's
credentials to no function. tests/e2e/test_secrets_sandbox.py proves the same of the sandbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from platform_fixture import Platform, descendants

WARNING = "functions run without a sandbox"
VALUES = {"alpha-key": "alpha-SECRET-value-111", "beta-key": "beta-SECRET-value-222"}
FUNCTIONS = {"alpha": ("alpha-key", "beta-key"), "beta": ("beta-key", "alpha-key")}  # name: (its secret, the other's)

SNOOP = """
import json, os
from flask import request

def handle(req):
    folder = os.environ["STREAMFAAS_SECRETS_DIR"]
    print("snooped", flush=True)
    return json.dumps({
        "folder": folder,
        "listing": sorted(os.listdir(folder)),
        "mine": open(os.path.join(folder, os.environ["MINE"])).read(),
        "env": dict(os.environ),
        "authorization": request.headers.get("Authorization"),
    })
"""

AUTH_ECHO = """
from flask import request

def handle(req):
    return request.headers.get("Authorization") or "none"
"""


@dataclass
class Unsandboxed:
    platform: Platform
    seen: dict[str, dict[str, Any]]  # what each function reported about itself


@pytest.fixture(scope="module")
def unsandboxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unsandboxed]:
    """A --no-sandbox gateway with two functions, each given one of two secrets, each called once."""
    root = tmp_path_factory.mktemp("unsandboxed")
    p = Platform(root / "state", sandbox=False).start()
    try:
        for name, value in VALUES.items():
            assert p.http.post(p.url + "/system/secrets", json={"name": name, "value": value}).status_code == 201
        handler = p.write_function(root, "snoop", SNOOP)
        for fn, (mine, _theirs) in FUNCTIONS.items():
            p.images.build(f"{fn}:latest", "python3-flask", handler)
            body = {"service": fn, "image": f"{fn}:latest", "secrets": [mine], "envVars": {"MINE": mine}}
            assert p.http.post(p.url + "/system/functions", json=body).status_code == 202
        for fn in FUNCTIONS:
            p.wait_ready(fn)
        seen = {fn: httpx.get(p.function_url(fn), timeout=30).json() for fn in FUNCTIONS}
        yield Unsandboxed(p, seen)
    finally:
        p.close()


def _platform_processes(p: Platform) -> dict[int, tuple[bytes, bytes]]:
    """(cmdline, environ) of the gateway and every process below it (the test runs as root)."""
    assert p.proc is not None
    found = {}
    for pid in {p.proc.pid, *descendants(p.proc.pid)}:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline, open(f"/proc/{pid}/environ", "rb") as environ:
                found[pid] = (cmdline.read(), environ.read())
        except OSError:
            continue  # gone meanwhile
    return found


def test_gateway_warns_once_that_functions_run_unsandboxed(unsandboxed: Unsandboxed) -> None:
    p = unsandboxed.platform
    r = p.http.post(f"{p.url}/system/scale-function/alpha", json={"replicas": 2})
    assert r.status_code == 202
    p.wait_ready("alpha", replicas=2)  # three replicas started in all
    assert p.log_path.read_text().count(WARNING) == 1


def test_function_gets_only_its_own_secrets(unsandboxed: Unsandboxed) -> None:
    seen = unsandboxed.seen
    for fn, (mine, _theirs) in FUNCTIONS.items():
        assert seen[fn]["env"]["STREAMFAAS_SECRETS_DIR"] == seen[fn]["folder"]
        assert seen[fn]["listing"] == [mine]  # no copy of the other function's secret
        assert seen[fn]["mine"] == VALUES[mine]
    assert seen["alpha"]["folder"] != seen["beta"]["folder"]


def test_secret_values_stay_out_of_environments_process_list_and_logs(unsandboxed: Unsandboxed) -> None:
    p = unsandboxed.platform
    for fn in FUNCTIONS:
        env = json.dumps(unsandboxed.seen[fn]["env"])
        assert not [v for v in VALUES.values() if v in env], fn
    processes = _platform_processes(p)
    assert len(processes) >= 5  # the gateway, and a watchdog and a function server for each function
    for pid, (cmdline, environ) in processes.items():
        for value in VALUES.values():
            assert value.encode() not in cmdline, pid
            assert value.encode() not in environ, pid
    logs = p.log_path.read_text() + "".join(f.read_text() for f in (p.state_dir / "logs").glob("*.log"))
    assert logs.count("snooped") == len(FUNCTIONS)  # the functions' output is there …
    for value in VALUES.values():
        assert value not in logs  # … and no value


def test_admin_password_never_reaches_a_function(unsandboxed: Unsandboxed, tmp_path: Path) -> None:
    p = unsandboxed.platform
    assert p.password
    for fn in FUNCTIONS:
        assert p.password not in json.dumps(unsandboxed.seen[fn]["env"])
    for pid, (_cmdline, environ) in _platform_processes(p).items():
        assert p.password.encode() not in environ, pid

    # Not forwarded as a header: not the admin's basic auth, not a private function's token.
    assert httpx.get(p.function_url("beta"), auth=("admin", p.password), timeout=30).json()["authorization"] is None
    mine = httpx.get(p.function_url("beta"), headers={"Authorization": "Bearer mine"}, timeout=30)
    assert mine.json()["authorization"] == "Bearer mine"  # the caller's own header goes through
    p.deploy("vault", p.write_function(tmp_path, "vault", AUTH_ECHO), labels={"streamfaas.auth/private": "true"})
    assert httpx.get(p.function_url("vault"), timeout=30).status_code == 401
    token = p.http.get(p.url + "/system/function-token/vault").json()["token"]
    assert httpx.get(p.function_url("vault"), headers={"Authorization": f"Bearer {token}"}, timeout=30).text == "none"
    assert httpx.get(p.function_url("vault"), auth=("admin", p.password), timeout=30).text == "none"
