"""The CLI driven as a user runs it: subprocesses against a real gateway."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO

import pytest

from platform_fixture import REPO, Platform, Signals, streamfaas_cmd, wait_for


def run_cli(platform: Platform | None, *args: str, stdin: bytes = b"", cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = platform.env() if platform else None
    proc = subprocess.run(streamfaas_cmd(*args), input=stdin, capture_output=True, cwd=cwd, env=env, timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    dest = tmp_path / "examples"
    shutil.copytree(REPO / "examples", dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_up_invoke_list_describe_remove(platform: Platform, examples: Path) -> None:
    up = run_cli(platform, "up", "-f", str(examples / "stack.yaml"), "--filter", "stream", "--filter", "hello")
    assert up.returncode == 0, up.stderr
    assert "deployed stream" in up.stderr
    platform.wait_ready("stream")
    platform.wait_ready("hello")

    hello = run_cli(platform, "invoke", "hello", stdin=b"streamfaas")
    assert hello.returncode == 0, hello.stderr
    assert hello.stdout == "Hello, streamfaas!\n"

    stream = run_cli(platform, "invoke", "stream", "--raw", stdin=b"What are some calorie dense foods?")
    assert stream.returncode == 0
    events = [json.loads(line[6:])["content"] for line in stream.stdout.splitlines() if line.startswith("data: {\"content")]
    assert len(events) > 10
    assert "".join(events).startswith("Calorie dense foods")

    listed = run_cli(platform, "list", "--json")
    names = {f["name"]: f for f in json.loads(listed.stdout)}
    assert set(names) == {"stream", "hello"}
    assert names["hello"]["invocationCount"] == 1
    assert names["hello"]["labels"]["faas_function"] == "hello"
    table = run_cli(platform, "list")
    assert "stream" in table.stdout and "Invocations" in table.stdout

    described = run_cli(platform, "describe", "stream")
    assert "Status:             Ready" in described.stdout
    assert f"{platform.url}/function/stream" in described.stdout

    removed = run_cli(platform, "remove", "hello")
    assert removed.returncode == 0
    assert [f["name"] for f in json.loads(run_cli(platform, "list", "--json").stdout)] == ["stream"]


def test_invoke_prints_chunks_as_they_arrive(platform: Platform, signals: Signals, tmp_path: Path) -> None:
    code = """
    import os, urllib.request
    from flask import Response

    def handle(req):
        def gen():
            yield "first\\n"
            urllib.request.urlopen(os.environ["SIGNALS"] + "/wait/gate?timeout=20").read()
            yield "second\\n"
        return Response(gen(), mimetype="text/plain")
    """
    platform.deploy("twostep", platform.write_function(tmp_path, "twostep", code), env={"SIGNALS": signals.url})
    proc = subprocess.Popen(streamfaas_cmd("invoke", "twostep"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=platform.env())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"first\n"  # printed before the function finished
        signals.open("gate")
        assert proc.stdout.readline() == b"second\n"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_logs_show_function_output(platform: Platform, tmp_path: Path) -> None:
    code = """
    import sys

    def handle(req):
        print("handled " + req, flush=True)
        return "ok"
    """
    platform.deploy("chatty", platform.write_function(tmp_path, "chatty", code))
    assert run_cli(platform, "invoke", "chatty", stdin=b"marker-42").returncode == 0

    def logged() -> bool:
        return "handled marker-42" in run_cli(platform, "logs", "chatty").stdout

    wait_for(logged, what="the function's print in its logs", interval=0.2)


def test_logs_follow_streams_new_lines(platform: Platform, tmp_path: Path) -> None:
    code = """
    def handle(req):
        print("line " + req, flush=True)
        return "ok"
    """
    platform.deploy("follow", platform.write_function(tmp_path, "follow", code))
    proc = subprocess.Popen(streamfaas_cmd("logs", "follow", "--follow", "--tail", "1"), stdout=subprocess.PIPE, env=platform.env())
    try:
        assert proc.stdout is not None
        lines = _LineReader(proc.stdout)
        assert lines.next_line(20)  # the last line already written: the follower is attached
        assert run_cli(platform, "invoke", "follow", stdin=b"later").returncode == 0
        deadline = time.monotonic() + 20
        seen = ""
        while "line later" not in seen and time.monotonic() < deadline:
            seen += lines.next_line(deadline - time.monotonic())
        assert "line later" in seen
    finally:
        proc.kill()
        proc.wait()


class _LineReader:
    """Lines from a pipe, each waited for with a deadline (never blocks past it)."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.fd = pipe.fileno()
        self.buffer = b""

    def next_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return ""
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return ""
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode() + "\n"


def test_new_creates_function_and_stack_entry(tmp_path: Path) -> None:
    result = run_cli(None, "new", "my-fn", "--lang", "python3-flask", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "my-fn" / "handler.py").read_text().startswith("def handle(req)")
    stack = (tmp_path / "stack.yaml").read_text()
    assert "my-fn:" in stack and "lang: python3-flask" in stack and "handler: ./my-fn" in stack
    again = run_cli(None, "new", "my-fn", "--lang", "python3-flask", cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1


def test_new_writes_no_file_through_a_link_a_cloned_project_planted(tmp_path: Path) -> None:
    victim = tmp_path / "bashrc"
    victim.write_text("mine\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "stack.yaml").write_text("version: 1.0\nfunctions:\n  other:\n    lang: python3-flask\n    handler: ./other\n")
    (project / ".stack.yaml.tmp").symlink_to(victim)  # the temporary name `new` once used
    (project / "template").symlink_to(tmp_path, target_is_directory=True)  # where faas-cli's copy goes
    result = run_cli(None, "new", "my-fn", "--lang", "python3-flask", cwd=project)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "mine\n"
    assert not (project / "stack.yaml").is_symlink() and "my-fn:" in (project / "stack.yaml").read_text()
    assert not (tmp_path / "python3-flask").exists()  # nothing laid through the linked template/


def test_template_store_list_shows_templates() -> None:
    result = run_cli(None, "template", "store", "list")
    assert result.returncode == 0
    for name in ("python3-flask", "python3-flask-debian", "python3-http"):
        assert name in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("invoke",), 2, "Missing argument 'NAME'"),
        (("scale", "x", "--replicas", "-1"), 2, "--replicas"),
        (("gateway", "--port", "99999"), 2, "--port"),
        (("frobnicate",), 2, "No such command"),
        (("up", "-f", "/nonexistent/stack.yaml"), 1, "/nonexistent/stack.yaml"),
    ],
)
def test_bad_arguments_give_one_line_and_nonzero_exit(args: tuple[str, ...], code: int, needle: str) -> None:
    result = run_cli(None, *args)
    assert result.returncode == code
    assert needle in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_function_and_unreachable_gateway_are_one_line(platform: Platform) -> None:
    missing = run_cli(platform, "invoke", "nope")
    assert missing.returncode == 1
    assert missing.stderr == "Error: nope: HTTP 404: function 'nope' not found\n"
    gone = run_cli(None, "list", "--gateway", "http://127.0.0.1:9")
    assert gone.returncode == 1
    assert "cannot reach the gateway at http://127.0.0.1:9" in gone.stderr
    assert gone.stderr.count("\n") == 1


def test_invalid_stack_names_file_key_and_line(tmp_path: Path) -> None:
    stack = tmp_path / "stack.yaml"
    stack.write_text("version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  fn:\n    lang: python3-flask\n    handlr: ./fn\n")
    result = run_cli(None, "build", "-f", str(stack))
    assert result.returncode == 1
    assert "stack.yaml:7" in result.stderr and "handlr" in result.stderr


def test_every_command_has_help() -> None:
    for command in ("build", "deploy", "up", "invoke", "list", "describe", "remove", "logs", "scale", "new", "gateway", "template"):
        result = run_cli(None, command, "--help")
        assert result.returncode == 0, command
        assert "Usage:" in result.stdout
