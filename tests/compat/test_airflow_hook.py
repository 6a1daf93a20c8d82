"""Airflow's OpenFaaS hook (``apache-airflow-providers-openfaas``, ``OpenFaasHook``) against a
gateway run with ``--auth none``.

The hook (read from its wheel, 3.9.6) sends no credentials and calls ``requests`` with a
``dict`` as the positional ``data``, so every body goes out form-encoded:

- ``does_function_exist``: ``requests.get(HOST + "/system/function/" + NAME)``, true when
  ``response.ok``;
- ``deploy_function``: ``requests.post(HOST + "/system/functions", body)``, success only on 202;
  ``update_function``: the same with ``requests.put``;
- ``invoke_function``: ``requests.post(HOST + "/function/" + NAME, body)``;
  ``invoke_async_function``: ``requests.post(HOST + "/async-function/" + NAME, body)``; both
  succeed when ``response.ok``.

Each test replays one of these with ``requests`` exactly as the hook calls it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from platform_fixture import Platform, streamfaas_cmd, wait_for

ECHO = """
from flask import request

def handle(req):
    return f"{request.content_type} {req}"
"""
# What an Airflow DAG passes as ``body``: a dict (here a deployment, as the hook's docs show).
DEPLOY_BODY = {"service": "airflow-fn", "image": "airflow-fn:latest"}


@pytest.fixture(scope="module")
def open_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A gateway with ``--auth none``, as the README tells Airflow users to run it."""
    root = tmp_path_factory.mktemp("airflow")
    p = Platform(root / "state", ("--auth", "none")).start()
    try:
        p.deploy("airflow-fn", p.write_function(root, "airflow-fn", ECHO))
        yield p
    finally:
        p.close()


def test_gateway_without_auth_warns_on_stderr_and_listens_on_loopback(open_platform: Platform) -> None:
    log = open_platform.log_path.read_text()
    assert "WARNING: --auth none: NO AUTHENTICATION on http://127.0.0.1:" in log
    assert not (open_platform.state_dir / "auth" / "admin-password").exists()


def test_does_function_exist_is_true_without_credentials(open_platform: Platform) -> None:
    response = requests.get(open_platform.url + "/system/function/" + "airflow-fn")
    assert response.ok, response.text
    assert response.json()["name"] == "airflow-fn"
    assert not requests.get(open_platform.url + "/system/function/" + "no-such-fn").ok


def test_deploy_function_with_a_form_body_is_refused_saying_to_send_json(open_platform: Platform) -> None:
    response = requests.post(open_platform.url + "/system/functions", DEPLOY_BODY)
    assert response.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert response.status_code == 415
    assert "send the body as JSON, with 'Content-Type: application/json'" in response.text
    assert "form-encoded" in response.text and response.text.count("\n") == 1


def test_update_function_with_a_form_body_is_refused_saying_to_send_json(open_platform: Platform) -> None:
    response = requests.put(open_platform.url + "/system/functions", DEPLOY_BODY)
    assert response.status_code == 415
    assert "send the body as JSON" in response.text


def test_invoke_function_posts_the_form_body_to_the_function(open_platform: Platform) -> None:
    response = requests.post(open_platform.url + "/function/" + "airflow-fn", {"report": "42", "day": "mon"})
    assert response.ok, response.text
    assert response.text == "application/x-www-form-urlencoded report=42&day=mon"


def test_invoke_async_function_is_queued_and_run(open_platform: Platform) -> None:
    before = open_platform.status("airflow-fn")["invocationCount"]
    response = requests.post(open_platform.url + "/async-function/" + "airflow-fn", {"report": "42"})
    assert response.ok and response.status_code == 202, response.text
    wait_for(lambda: open_platform.status("airflow-fn")["invocationCount"] > before, 30,
             what="the queued call to run")


def test_auth_none_refuses_a_public_host_without_the_explicit_flag(tmp_path: Path) -> None:
    proc = subprocess.run(
        streamfaas_cmd("--state-dir", str(tmp_path), "gateway", "--auth", "none", "--host", "0.0.0.0", "--port", "0"),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--i-know-no-auth-is-public" in proc.stderr and proc.stderr.count("\n") == 1
