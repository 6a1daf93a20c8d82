"""An OpenFaaS user's workflow through the CLI against a gateway subprocess, behind auth."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from platform_fixture import REPO, Platform, streamfaas_cmd, wait_for


def cli(env: dict[str, str], *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(streamfaas_cmd(*args), input=stdin, capture_output=True, env=env, timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def test_login_logout_with_password_stdin(platform: Platform, tmp_path: Path) -> None:
    env = platform.env()
    env["OPENFAAS_CONFIG"] = str(tmp_path / "openfaas")
    env["STREAMFAAS_STATE_DIR"] = str(tmp_path / "elsewhere")  # no local password file to fall back on
    denied = cli(env, "list")
    assert denied.returncode == 1
    assert "unauthorized" in denied.stderr and "streamfaas login" in denied.stderr

    wrong = cli(env, "login", "--password-stdin", stdin=b"not-it\n")
    assert wrong.returncode == 1
    assert wrong.stderr == f"Error: wrong username or password for {platform.url}\n"

    ok = cli(env, "login", "--username", "admin", "--password-stdin", stdin=platform.password.encode() + b"\n")
    assert ok.returncode == 0, ok.stderr
    config = tmp_path / "openfaas" / "config.yml"
    assert config.stat().st_mode & 0o777 == 0o600
    assert platform.password not in config.read_text()  # stored as faas-cli does: base64 token
    assert cli(env, "list").returncode == 0

    assert cli(env, "logout").returncode == 0
    assert cli(env, "list").returncode == 1


def test_openfaas_workflow_round_trip(platform: Platform, tmp_path: Path) -> None:
    env = platform.env()
    env["OPENFAAS_CONFIG"] = str(tmp_path / "openfaas")
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(REPO / "examples" / "hello", project / "hello")
    (project / "stack.yaml").write_text(
        "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  hello:\n    lang: python3-flask\n"
        "    handler: ./hello\n    image: hello:0.1\n    secrets:\n      - greeting\n"
    )
    stack = str(project / "stack.yaml")

    assert cli(env, "login", "--password-stdin", stdin=platform.password.encode()).returncode == 0
    built = cli(env, "build", "-f", stack)
    assert built.returncode == 0 and "built hello" in built.stderr
    missing = cli(env, "deploy", "-f", stack)
    assert missing.returncode == 1
    assert "secret(s) not found: greeting" in missing.stderr

    assert cli(env, "secret", "create", "greeting", stdin=b"value-from-stdin").returncode == 0
    assert cli(env, "secret", "create", "greeting", "--from-literal", "x").returncode == 1
    (tmp_path / "v.txt").write_text("from-file")
    assert cli(env, "secret", "update", "greeting", "--from-file", str(tmp_path / "v.txt")).returncode == 0
    listed = json.loads(cli(env, "secret", "list", "--json").stdout)
    assert listed == [{"name": "greeting", "namespace": "openfaas-fn"}]
    assert "from-file" not in cli(env, "secret", "list").stdout

    assert cli(env, "deploy", "-f", stack).returncode == 0
    platform.wait_ready("hello")
    verbose = cli(env, "list", "-v")
    assert "hello:0.1" in verbose.stdout
    invoked = cli(env, "invoke", "hello", "-H", "X-Test=1", "--query", "a=b", stdin=b"faas")
    assert invoked.stdout == "Hello, faas!\n"
    assert cli(env, "namespace", "list").stdout.strip() == "openfaas-fn"

    assert cli(env, "scale", "hello", "--replicas", "0").returncode == 0
    assert json.loads(cli(env, "describe", "hello", "--json").stdout)["replicas"] == 0
    assert cli(env, "invoke", "hello", stdin=b"again").stdout == "Hello, again!\n"  # cold start
    assert cli(env, "scale", "hello", "--replicas", "1").returncode == 0

    wait_for(lambda: "watchdog" in cli(env, "logs", "hello").stdout, what="replica log lines", interval=0.2)

    in_use = cli(env, "secret", "remove", "greeting")
    assert in_use.returncode == 1 and "used by hello" in in_use.stderr
    assert cli(env, "remove", "-f", stack).returncode == 0
    assert cli(env, "secret", "remove", "greeting").returncode == 0
    assert json.loads(cli(env, "list", "--json").stdout) == []
