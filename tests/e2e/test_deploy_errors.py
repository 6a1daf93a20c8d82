"""Errors surface at deploy time, in words, instead of as a 503 a cold-start timeout later."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

from platform_fixture import Platform, streamfaas_cmd, wait_for
from streamfaas.errors import StackError
from streamfaas.stack import load_stack

# Line 3 lacks its colon: importing the handler fails with a SyntaxError that names line 3.
SYNTAX_ERROR = 'import os\n\ndef handle(req)\n    return req\n'
GOOD = 'def handle(req):\n    return "good version"\n'
# Fails at import, every time: the replica crash-loops.
CRASHES_AT_IMPORT = 'import os\n\nraise RuntimeError("DATABASE_URL is not set")\n\ndef handle(req):\n    return req\n'


def cli(platform: Platform, *args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(streamfaas_cmd(*args), capture_output=True, text=True, cwd=cwd, env=platform.env(), timeout=120)
    return proc, time.monotonic() - started


def write_stack(folder: Path, name: str, handler_code: str, environment: str = "") -> Path:
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / name / "handler.py").write_text(handler_code)
    (folder / name / "requirements.txt").write_text("")
    stack = folder / "stack.yaml"
    stack.write_text(
        "version: 1.0\n"
        "provider:\n"
        "  name: openfaas\n"
        "functions:\n"
        f"  {name}:\n"
        "    lang: python3-flask\n"
        f"    handler: ./{name}\n"
        + environment
    )
    return stack


def test_up_of_a_syntax_error_exits_1_with_the_traceback(shared_platform: Platform, tmp_path: Path) -> None:
    write_stack(tmp_path, "broken", SYNTAX_ERROR)
    up, took = cli(shared_platform, "up", cwd=tmp_path)
    assert up.returncode == 1, up.stderr
    assert took < 20, f"up took {took:.1f}s"  # not the 60 s cold-start timeout
    assert 'File "function/handler.py", line 3' in up.stderr
    assert "def handle(req)" in up.stderr
    assert "SyntaxError: expected ':'" in up.stderr
    assert "deployed broken" not in up.stderr
    # The status says why, for any client that polls it.
    assert "SyntaxError" in shared_platform.status("broken")["startError"]


def test_up_prints_a_start_error_with_its_escape_sequences_escaped(shared_platform: Platform, tmp_path: Path) -> None:
    # The start error is the function's own stderr: OSC 52 in it set the admin's clipboard, and
    # "\x1b[2K\r" redrew the error line as a success.
    hostile = 'raise RuntimeError("\\x1b]52;c;Y3VybCBldmlsfHNo\\x07\\x1b[2K\\rdeployed OK")\n\ndef handle(req):\n    return req\n'
    write_stack(tmp_path, "escapes", hostile)
    up, _ = cli(shared_platform, "up", cwd=tmp_path)
    assert up.returncode == 1, up.stderr
    assert "\x1b" not in up.stderr and "\x07" not in up.stderr
    assert "\\x1b]52;c;Y3VybCBldmlsfHNo\\x07\\x1b[2K\\rdeployed OK" in up.stderr


def test_deploy_of_a_broken_update_exits_1_and_the_old_version_serves(shared_platform: Platform, tmp_path: Path) -> None:
    write_stack(tmp_path, "updated", GOOD)
    first, _ = cli(shared_platform, "up", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "deployed updated" in first.stderr
    assert httpx.post(shared_platform.function_url("updated"), timeout=30).text == "good version"

    write_stack(tmp_path, "updated", SYNTAX_ERROR)
    assert cli(shared_platform, "build", cwd=tmp_path)[0].returncode == 0
    update, took = cli(shared_platform, "deploy", cwd=tmp_path)
    assert update.returncode == 1, update.stderr
    assert took < 20, f"deploy took {took:.1f}s"
    assert "the old version keeps serving" in update.stderr
    assert 'File "function/handler.py", line 3' in update.stderr
    assert "SyntaxError: expected ':'" in update.stderr
    assert httpx.post(shared_platform.function_url("updated"), timeout=30).text == "good version"


def test_bad_watchdog_setting_in_stack_yaml_names_the_key_and_line(shared_platform: Platform, tmp_path: Path) -> None:
    stack = write_stack(tmp_path, "badsetting", GOOD, "    environment:\n      read_timeout: 10s\n      exec_timeout: tenminutes\n")
    assert stack.read_text().splitlines()[9] == "      exec_timeout: tenminutes"  # line 10
    for command in ("up", "deploy"):
        result, _ = cli(shared_platform, command, cwd=tmp_path)
        assert result.returncode == 1
        assert "stack.yaml:10: functions.badsetting.environment.exec_timeout: invalid duration 'tenminutes'" in result.stderr
    assert shared_platform.http.get(f"{shared_platform.url}/system/function/badsetting").status_code == 404


def test_bad_watchdog_setting_in_an_environment_file_names_that_file_and_line(tmp_path: Path) -> None:
    write_stack(tmp_path, "envfile", GOOD, "    environment_file:\n      - limits.yml\n")
    (tmp_path / "limits.yml").write_text("environment:\n  threads: 8\n  max_inflight: lots\n")
    with pytest.raises(StackError) as caught:
        load_stack(tmp_path / "stack.yaml")
    assert str(caught.value) == f"{tmp_path / 'limits.yml'}:3: environment.max_inflight: expected an integer, got 'lots'"


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_bad_watchdog_setting_via_the_api_is_400_naming_the_key(shared_platform: Platform, tmp_path: Path, method: str) -> None:
    name = f"badapi-{method.lower()}"
    handler = shared_platform.write_function(tmp_path, name, GOOD)
    if method == "PUT":
        shared_platform.deploy(name, handler)
    else:
        shared_platform.images.build(f"{name}:latest", "python3-flask", handler)
    body = {"service": name, "image": f"{name}:latest", "envVars": {"exec_timeout": "tenminutes", "max_inflight": "1"}}
    r = shared_platform.http.request(method, f"{shared_platform.url}/system/functions", json=body)
    assert r.status_code == 400
    assert r.text.startswith("envVars.exec_timeout: invalid duration 'tenminutes'")
    assert "max_inflight" not in r.text  # a good setting is not blamed
    expected = 200 if method == "PUT" else 404  # an update refused leaves the function as it was
    assert shared_platform.http.get(f"{shared_platform.url}/system/function/{name}").status_code == expected


def test_crash_looping_function_answers_503_at_once_with_its_error(shared_platform: Platform, tmp_path: Path) -> None:
    handler = tmp_path / "crashloop"
    handler.mkdir()
    (handler / "handler.py").write_text(CRASHES_AT_IMPORT)
    (handler / "requirements.txt").write_text("")
    shared_platform.deploy("crashloop", handler, wait=False)
    url = shared_platform.function_url("crashloop")
    started = time.monotonic()
    first = httpx.post(url, timeout=90)  # waits for the first start only, not the 60 s cold start
    assert time.monotonic() - started < 20
    assert first.status_code == 503
    # The caller (anyone, for a public function) gets the exception's type and place, never its
    # message: it may quote a secret the function read (int(api_key) → "invalid literal … 'sk-…'").
    assert first.text == ("function 'crashloop' is failing to start: RuntimeError (function/handler.py, line 3); "
                          "`streamfaas describe crashloop` shows the error\n")
    # While it keeps failing (restarting with backoff), every request is answered at once.
    for _ in range(3):
        started = time.monotonic()
        again = httpx.post(url, timeout=90)
        assert again.status_code == 503
        assert "RuntimeError (function/handler.py" in again.text and "DATABASE_URL" not in again.text
        assert time.monotonic() - started < 2
    assert "DATABASE_URL is not set" in shared_platform.status("crashloop")["startError"]


RAISES = {
    "python3-flask": 'def handle(req):\n    raise ValueError("bad input: " + req)\n',
    "python3-http": 'def handle(event, context):\n    raise ValueError("bad input: " + event.body.decode())\n',
}


@pytest.mark.parametrize("lang", sorted(RAISES))
def test_raising_handler_answers_500_with_one_line_and_logs_the_traceback(shared_platform: Platform, tmp_path: Path, lang: str) -> None:
    name = f"raises-{lang.removeprefix('python3-')}"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "handler.py").write_text(RAISES[lang])
    (folder / "requirements.txt").write_text("")
    shared_platform.deploy(name, folder, lang=lang)
    r = httpx.post(shared_platform.function_url(name), content=b"xyz", timeout=30)
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("text/plain")
    # The type only: the message (here the caller's own input) may quote what the handler held.
    assert r.text == "handler failed: ValueError (the traceback is in the function's logs)\n"
    log = shared_platform.state_dir / "logs" / f"{name}.log"
    text = wait_for(lambda: log.exists() and "ValueError: bad input: xyz" in log.read_text() and log.read_text(),
                    what="the traceback in the function's log")
    assert "Traceback (most recent call last)" in text
    assert 'handler.py", line 2, in handle' in text


# The generator raises after its first event: the server cuts the chunked stream short.
CUT_SHORT = """
from flask import Response

def handle(req):
    def events():
        yield "data: first\\n\\n"
        raise ConnectionError("lost the model server")
    return Response(events(), mimetype="text/event-stream")
"""


def test_cut_stream_error_event_names_the_cause_in_words(shared_platform: Platform, tmp_path: Path) -> None:
    shared_platform.deploy("cutshort", shared_platform.write_function(tmp_path, "cutshort", CUT_SHORT))
    with httpx.Client(timeout=30) as client, connect_sse(client, "POST", shared_platform.function_url("cutshort")) as es:
        events = list(es.iter_sse())
    assert [e.event for e in events] == ["message", "error"]
    assert events[0].data == "first"
    error = events[1].json()["error"]
    assert error == {"message": "the function closed the stream before finishing", "status": 502}
