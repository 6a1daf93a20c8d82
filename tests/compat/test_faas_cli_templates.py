"""``faas-cli deploy -f stack.yaml`` reads ``./template/LANG/template.yml`` before it sends
anything (commands/deploy.go, deriveFprocess: os.Stat, then go-sdk's
ParseYAMLForLanguageTemplate for ``fprocess``), and stops with "template directory may be
missing or invalid" when it is not there. ``streamfaas new`` and ``build`` lay it there."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
from ruamel.yaml import YAML

from go_wire import DEPLOY_OK
from platform_fixture import Platform, streamfaas_cmd


def run_cli(platform: Platform, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(streamfaas_cmd(*args), cwd=cwd, env=platform.env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def faas_cli_fprocess(cwd: Path, lang: str) -> str:
    """What faas-cli's deriveFprocess reads: the template.yml at ./template/LANG, from the
    current folder (LanguageTemplate: ``language``, ``fprocess``; other keys ignored)."""
    path = cwd / "template" / lang / "template.yml"
    assert path.is_file(), f"faas-cli would stop: {path} is missing"
    data: dict[str, Any] = YAML(typ="safe").load(path.read_text())
    return str(data.get("fprocess") or "")


def test_new_lays_the_template_where_faas_cli_deploy_reads_it(shared_platform: Platform, tmp_path: Path) -> None:
    out = run_cli(shared_platform, tmp_path, "new", "tpl-new", "--lang", "python3-flask")
    assert "template/python3-flask" in out.stdout
    fprocess = faas_cli_fprocess(tmp_path, "python3-flask")
    assert fprocess == "python index.py"
    for name in ("index.py", "requirements.txt", "Dockerfile", "function/handler.py"):
        assert (tmp_path / "template" / "python3-flask" / name).is_file(), name

    # Then what faas-cli deploy -f sends: PUT, and POST when the function is new (404).
    run_cli(shared_platform, tmp_path, "build", "-f", "stack.yaml")
    body = {"service": "tpl-new", "image": "tpl-new:latest", "envProcess": fprocess, "labels": {}, "annotations": {}}
    headers = {"Content-Type": "application/json", "User-Agent": "faas-cli/dev"}
    put = shared_platform.http.put(f"{shared_platform.url}/system/functions", json=body, headers=headers)
    assert put.status_code == 404, put.text
    post = shared_platform.http.post(f"{shared_platform.url}/system/functions", json=body, headers=headers)
    assert post.status_code in DEPLOY_OK, post.text
    shared_platform.wait_ready("tpl-new")
    assert httpx.post(shared_platform.function_url("tpl-new"), content=b"hi", timeout=30).status_code == 200


def test_build_lays_each_template_the_stack_uses_next_to_stack_yaml(shared_platform: Platform, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("tpl-a", "tpl-b"):
        (project / name).mkdir()
        (project / name / "handler.py").write_text("def handle(req):\n    return req\n")
    (project / "stack.yaml").write_text(
        "version: 1.0\nprovider:\n  name: openfaas\n  gateway: http://127.0.0.1:8080\nfunctions:\n"
        "  tpl-a:\n    lang: python3-flask\n    handler: ./tpl-a\n    image: tpl-a:latest\n"
        "  tpl-b:\n    lang: python3-flask-debian\n    handler: ./tpl-b\n    image: tpl-b:latest\n"
    )
    # Run from elsewhere: the template goes next to stack.yaml, where faas-cli is run from.
    run_cli(shared_platform, tmp_path, "build", "-f", "project/stack.yaml")
    assert faas_cli_fprocess(project, "python3-flask") == "python index.py"
    assert faas_cli_fprocess(project, "python3-flask-debian") == "python index.py"
    assert not (tmp_path / "template").exists()


def test_a_template_folder_of_the_users_is_never_overwritten(shared_platform: Platform, tmp_path: Path) -> None:
    mine = tmp_path / "template" / "python3-flask"
    mine.mkdir(parents=True)
    (mine / "template.yml").write_text("language: python3-flask\nfprocess: python my_index.py\n")
    run_cli(shared_platform, tmp_path, "new", "tpl-mine", "--lang", "python3-flask")
    run_cli(shared_platform, tmp_path, "build", "-f", "stack.yaml")
    assert sorted(p.name for p in mine.iterdir()) == ["template.yml"]
    assert faas_cli_fprocess(tmp_path, "python3-flask") == "python my_index.py"
