"""CLI options the README promises, each visible where it should land."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import httpx

from platform_fixture import Platform, streamfaas_cmd, wait_for

ECHO_REQUEST = """
import json
from flask import request

def handle(req):
    return json.dumps({
        "method": request.method,
        "path": request.full_path,
        "query": request.args.to_dict(),
        "headers": {k: v for k, v in request.headers.items()},
        "body": req,
    })
"""


def cli(platform: Platform | None, *args: str, stdin: bytes = b"", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(streamfaas_cmd(*args), input=stdin, capture_output=True, cwd=cwd,
                          env=platform.env() if platform else None, timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def test_invoke_header_query_method_and_token_reach_the_function(platform: Platform, tmp_path: Path) -> None:
    p = platform
    p.deploy("echoreq", p.write_function(tmp_path, "echoreq", ECHO_REQUEST), labels={"streamfaas.auth/private": "true"})
    token = p.http.get(f"{p.url}/system/function-token/echoreq").json()["token"]
    r = cli(p, "invoke", "echoreq", "-H", "X-Test=one", "-H", "X-Other=two=2", "--query", "a=b", "--query", "c=d e",
            "--method", "PUT", "--token", token, stdin=b"body-text")
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["method"] == "PUT"
    assert seen["query"] == {"a": "b", "c": "d e"}
    assert seen["headers"]["X-Test"] == "one" and seen["headers"]["X-Other"] == "two=2"
    assert seen["body"] == "body-text"
    assert "Authorization" not in seen["headers"]  # the token opened the door; the function never sees it
    # Without the token the private function refuses, in one line, exit 1.
    refused = cli(p, "invoke", "echoreq", "--token", "wrong", stdin=b"x")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1


def test_logs_since_shows_only_later_lines(platform: Platform, tmp_path: Path) -> None:
    p = platform
    code = "def handle(req):\n    print('line ' + req, flush=True)\n    return 'ok'\n"
    p.deploy("sincefn", p.write_function(tmp_path, "sincefn", code))
    assert cli(p, "invoke", "sincefn", stdin=b"early").returncode == 0
    wait_for(lambda: "line early" in cli(p, "logs", "sincefn").stdout, what="the early line", interval=0.2)
    # Log stamps have one-second resolution: start "since" at the next whole second.
    cut = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).replace(microsecond=0)
    wait_for(lambda: dt.datetime.now(dt.UTC) >= cut, what="the next second", interval=0.05)
    assert cli(p, "invoke", "sincefn", stdin=b"late").returncode == 0
    since = cut.strftime("%Y-%m-%dT%H:%M:%SZ")
    wait_for(lambda: "line late" in cli(p, "logs", "sincefn", "--since", since).stdout, what="the late line", interval=0.2)
    later = cli(p, "logs", "sincefn", "--since", since).stdout
    assert "line early" not in later


def test_template_store_pull_copies_the_template(tmp_path: Path) -> None:
    r = cli(None, "template", "store", "pull", "python3-flask", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pulled = tmp_path / "template" / "python3-flask"
    for name in ("index.py", "template.yml", "requirements.txt", "Dockerfile", "function/handler.py"):
        assert (pulled / name).is_file(), name
    assert "fprocess" in (pulled / "template.yml").read_text()
    again = cli(None, "template", "store", "pull", "python3-flask", cwd=tmp_path)
    assert again.returncode == 1 and "already exists" in again.stderr
    unknown = cli(None, "template", "store", "pull", "no-such-template", cwd=tmp_path)
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr


def test_token_prints_the_token_a_private_function_takes(shared_platform: Platform, tmp_path: Path) -> None:
    p = shared_platform
    p.deploy("privtok", p.write_function(tmp_path, "privtok", "def handle(req):\n    return 'opened'\n"),
             labels={"streamfaas.auth/private": "true"})
    r = cli(p, "token", "privtok")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert httpx.get(p.function_url("privtok"), timeout=30).status_code == 401
    opened = httpx.get(p.function_url("privtok"), headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert (opened.status_code, opened.text) == (200, "opened")
    assert json.loads(cli(p, "namespace", "list", "--json").stdout) == ["openfaas-fn"]


def test_logs_tail_keeps_the_last_n_lines(shared_platform: Platform, tmp_path: Path) -> None:
    p = shared_platform
    code = "def handle(req):\n    print('tail line ' + req, flush=True)\n    return 'ok'\n"
    p.deploy("tailfn", p.write_function(tmp_path, "tailfn", code))
    for word in ("a", "b", "c"):
        assert cli(p, "invoke", "tailfn", stdin=word.encode()).returncode == 0
    wait_for(lambda: "tail line c" in cli(p, "logs", "tailfn").stdout, what="the last line", interval=0.2)
    everything = cli(p, "logs", "tailfn").stdout.splitlines()
    last_two = cli(p, "logs", "tailfn", "--tail", "2").stdout.splitlines()
    assert len(everything) > 3
    assert last_two == everything[-2:]
