"""of-watchdog's modes through the gateway: ``streaming`` and ``serializing`` (a process per
request, sandboxed as a function server is) and ``static`` (a folder of the image)."""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from platform_fixture import Platform, Signals, alive, descendants, wait_for
from streamfaas.provider.images import ImageStore

# Writes a line, then waits for the gate the test opens only after the client has that line:
# had the watchdog or the gateway held stdout back, this would deadlock (and fail at the
# deadline), whatever the timing.
GATED = """
import os, sys, urllib.error, urllib.request
print("line one")
try:
    urllib.request.urlopen(os.environ["SIGNALS"] + "/wait/" + sys.argv[1] + "?timeout=20").read()
except urllib.error.HTTPError:
    print("gave up")
    sys.exit(1)
print("line two")
"""
# Marks that it started, prints a line, then sleeps; the sleeps carry a token so the test can
# find them in /proc (a child in its process group too).
SLEEPER = """
python -c "import os,sys,urllib.request; urllib.request.urlopen(os.environ['SIGNALS'] + '/mark/' + sys.argv[1], b'').read()" "$1"
sleep "$2" &
echo started
sleep "$2"
echo finished
"""


def _token() -> str:
    """A sleep duration no other process on this machine has: it names the test's processes."""
    return f"{600 + secrets.randbelow(10**6) / 10**6:.6f}"


def _processes_with(token: str, command: bytes = b"") -> list[int]:
    """Live processes with ``token`` among their arguments (and ``command`` as argv[0])."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if token.encode() in argv and argv[0].endswith(command) and alive(int(entry)):
            found.append(int(entry))
    return found


def _deploy(p: Platform, root: Path, name: str, files: dict[str, str], fprocess: str | None, env: dict[str, str], *, wait: bool = True) -> None:
    """Build an image whose handler folder holds ``files`` and deploy it with ``fprocess``."""
    folder = root / name
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(textwrap.dedent(text))
    folder.mkdir(parents=True, exist_ok=True)
    p.images.build(f"{name}:latest", "python3-flask", folder)
    body: dict[str, Any] = {"service": name, "image": f"{name}:latest", "envVars": env}
    if fprocess is not None:
        body["envProcess"] = fprocess
    r = p.http.post(f"{p.url}/system/functions", json=body)
    assert r.status_code == 202, r.text
    if wait:
        p.wait_ready(name)


@pytest.fixture(scope="module")
def deployed(shared_platform: Platform, shared_signals: Signals, tmp_path_factory: pytest.TempPathFactory) -> Platform:
    """The functions most tests call, deployed once (each starts its replica at once)."""
    p, root = shared_platform, tmp_path_factory.mktemp("handlers")
    sig = {"SIGNALS": shared_signals.url}
    _deploy(p, root, "gated", {"gated.py": GATED}, "python function/gated.py stream-gate", {"mode": "streaming", **sig})
    _deploy(p, root, "cat", {}, "cat", {"mode": "streaming"})
    _deploy(p, root, "sha", {}, "sha512sum", {"mode": "serializing"})
    _deploy(p, root, "env", {}, "env", {"mode": "serializing", "GREETING": "hello"})
    failing = "sh -c 'echo not this line >&2; echo \"bad input: no name\" >&2; exit 3'"
    _deploy(p, root, "fail-streaming", {}, failing, {"mode": "streaming"})
    _deploy(p, root, "fail-serializing", {}, failing, {"mode": "serializing"})
    static = {"public/index.html": "<h1>home</h1>\n", "public/docs/guide.txt": "the guide\n",
              "public/docs/index.html": "docs index\n", "private.txt": "NOT-PUBLIC-a1b2\n"}
    _deploy(p, root, "site", static, None, {"mode": "static"})
    return p


# ---- streaming ------------------------------------------------------------------------------
def test_streaming_sends_each_line_before_the_process_ends(deployed: Platform, shared_signals: Signals) -> None:
    with httpx.stream("GET", deployed.function_url("gated"), timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["transfer-encoding"] == "chunked"
        lines = r.iter_lines()
        assert next(lines) == "line one"
        shared_signals.open("stream-gate")  # only now may the process go on
        assert list(lines) == ["line two"]


def test_streaming_passes_the_request_body_to_stdin(deployed: Platform) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)  # bigger than a pipe: stdin and stdout flow together
    r = httpx.post(deployed.function_url("cat"), content=body, timeout=60)
    assert r.status_code == 200
    assert r.content == body
    chunks = iter([body[i:i + 65536] for i in range(0, len(body), 65536)])
    r = httpx.post(deployed.function_url("cat"), content=chunks, timeout=60)  # chunked, unsized
    assert r.content == body


def test_streaming_with_no_body_gives_an_empty_200(deployed: Platform) -> None:
    r = httpx.get(deployed.function_url("cat"), timeout=30)
    assert (r.status_code, r.content) == (200, b"")


@pytest.mark.parametrize("mode", ["streaming", "serializing"])
def test_nonzero_exit_before_output_is_500_with_stderr_last_line(deployed: Platform, mode: str) -> None:
    r = httpx.post(deployed.function_url(f"fail-{mode}"), content=b"x", timeout=30)
    assert r.status_code == 500
    assert r.text == "bad input: no name\n"


def test_failure_after_output_is_an_error_event(shared_platform: Platform, tmp_path: Path) -> None:
    script = "printf 'data: one\\n\\n'; echo 'disk full' >&2; exit 4"
    _deploy(shared_platform, tmp_path, "sse-fail", {"run.sh": script}, "sh function/run.sh",
            {"mode": "streaming", "content_type": "text/event-stream"})
    with httpx.Client(timeout=30) as client, connect_sse(client, "GET", shared_platform.function_url("sse-fail")) as es:
        assert es.response.headers["cache-control"] == "no-cache"
        events = list(es.iter_sse())
    assert events[0].data == "one"
    assert events[-1].event == "error"
    assert "disk full" in events[-1].json()["error"]["message"]


def test_failure_after_output_aborts_a_plain_body(shared_platform: Platform, tmp_path: Path) -> None:
    _deploy(shared_platform, tmp_path, "plain-fail", {"run.sh": "echo partial; exit 4"}, "sh function/run.sh", {"mode": "streaming"})
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(shared_platform.function_url("plain-fail"), timeout=30)


def test_streaming_exec_timeout_kills_the_process(shared_platform: Platform, shared_signals: Signals, tmp_path: Path) -> None:
    token = _token()
    _deploy(shared_platform, tmp_path, "slow-stream", {"run.sh": SLEEPER}, f"sh function/run.sh slow-stream {token}",
            {"mode": "streaming", "exec_timeout": "3s", "SIGNALS": shared_signals.url})
    with httpx.stream("GET", shared_platform.function_url("slow-stream"), timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines) == "started"
        assert _processes_with(token)
        with pytest.raises(httpx.RemoteProtocolError):  # cut, not a silent truncated success
            list(lines)
    wait_for(lambda: not _processes_with(token), 5, what="the timed-out process to be gone")


def test_serializing_exec_timeout_gives_504_and_kills_the_process(shared_platform: Platform, shared_signals: Signals, tmp_path: Path) -> None:
    token = _token()
    _deploy(shared_platform, tmp_path, "slow-serial", {"run.sh": SLEEPER}, f"sh function/run.sh slow-serial {token}",
            {"mode": "serializing", "exec_timeout": "3s", "SIGNALS": shared_signals.url})
    r = httpx.get(shared_platform.function_url("slow-serial"), timeout=30)
    assert r.status_code == 504
    assert "did not finish within 3s" in r.text
    assert shared_signals.marks("slow-serial")  # it did start
    wait_for(lambda: not _processes_with(token), 5, what="the timed-out process to be gone")


def _disconnect_kills_group(p: Platform, signals: Signals, root: Path, name: str) -> None:
    token = _token()
    _deploy(p, root, name, {"run.sh": SLEEPER}, f"sh function/run.sh {name} {token}", {"mode": "streaming", "SIGNALS": signals.url})
    with httpx.stream("GET", p.function_url(name), timeout=30) as r:
        lines = r.iter_lines()  # held: a dropped iterator closes the response
        assert next(lines) == "started"
        wait_for(lambda: len(_processes_with(token, b"sleep")) == 2, 5, what="the script's two sleeps")
    # The client went away: the script and the child in its group go at once.
    wait_for(lambda: not _processes_with(token), 3, what="the process group to be killed")
    assert len(signals.marks(name)) == 1


def test_client_disconnect_kills_the_process_group(shared_platform: Platform, shared_signals: Signals, tmp_path: Path) -> None:
    _disconnect_kills_group(shared_platform, shared_signals, tmp_path, "leaver")


def test_client_disconnect_kills_the_process_group_unsandboxed(signals: Signals, tmp_path: Path) -> None:
    p = Platform(tmp_path / "state", sandbox=False).start()
    try:
        _disconnect_kills_group(p, signals, tmp_path, "leaver")
    finally:
        p.close()


def test_max_inflight_applies_to_per_request_processes(shared_platform: Platform, shared_signals: Signals, tmp_path: Path) -> None:
    _deploy(shared_platform, tmp_path, "single", {"gated.py": GATED}, "python function/gated.py single-gate",
            {"mode": "streaming", "max_inflight": "1", "SIGNALS": shared_signals.url})
    with httpx.stream("GET", shared_platform.function_url("single"), timeout=30) as first:
        lines = first.iter_lines()
        assert next(lines) == "line one"
        r = httpx.get(shared_platform.function_url("single"), timeout=30)
        assert r.status_code == 429
        assert "max_inflight=1" in r.text
        shared_signals.open("single-gate")


# ---- serializing ----------------------------------------------------------------------------
def test_serializing_answers_with_content_length(deployed: Platform) -> None:
    body = os.urandom(200_000)
    r = httpx.post(deployed.function_url("sha"), content=body, timeout=30)
    assert r.status_code == 200
    assert r.text == hashlib.sha512(body).hexdigest() + "  -\n"
    assert r.headers["content-length"] == str(len(r.content))
    assert "transfer-encoding" not in r.headers
    assert float(r.headers["x-duration-seconds"]) > 0


def test_serializing_output_over_its_limit_is_a_502_not_held(shared_platform: Platform, tmp_path: Path) -> None:
    # Held whole before it is sent: a process writing without end grew the watchdog by GiBs.
    _deploy(shared_platform, tmp_path, "endless-out", {"run.sh": "exec yes"}, "sh function/run.sh", {"mode": "serializing"})
    r = httpx.get(shared_platform.function_url("endless-out"), timeout=60)
    assert r.status_code == 502
    assert r.text.strip() == "the function's output is larger than 67108864 bytes, which serializing mode holds whole: use mode streaming"


def test_process_gets_of_watchdogs_cgi_variables(deployed: Platform) -> None:
    r = httpx.put(deployed.function_url("env") + "/a/b?x=1&y=2", content=b"hi",
                  headers={"Content-Type": "text/plain", "x-custom-header": "c"}, timeout=30)
    assert r.status_code == 200
    env = dict(line.split("=", 1) for line in r.text.splitlines() if "=" in line)
    assert env["Http_Method"] == "PUT"
    assert env["Http_Path"] == "/a/b"
    assert env["Http_Query"] == "x=1&y=2"
    assert env["Http_Content_Type"] == "text/plain"
    assert env["Http_Content_Length"] == "2"
    assert env["Http_X_Custom_Header"] == "c"
    assert env["Http_X_Call_Id"] == r.headers["x-call-id"]
    assert "Http_Host" not in env  # not a header to Go's net/http, so not to of-watchdog
    assert env["GREETING"] == "hello"  # the function's own environment
    assert not {"STREAMFAAS_SANDBOX", "STREAMFAAS_FUNCTION_ENV", "STREAMFAAS_LISTEN_FD", "STREAMFAAS_READY_FD"} & set(env)


def test_per_request_process_runs_sandboxed(shared_platform: Platform, shared_signals: Signals, tmp_path: Path) -> None:
    """Started through the sandbox exactly as a function server: no root, none of the test's
    files, and its environment reaches no process of the platform."""
    from streamfaas.sandbox import bwrap_path

    if bwrap_path() is None:
        pytest.skip("bubblewrap (bwrap) is not usable here; .ci/run installs it")
    script = f"""
    id -u
    test -e {tmp_path} && echo sees-test-files
    python -c "import os,urllib.request; urllib.request.urlopen(os.environ['SIGNALS'] + '/wait/probe-gate?timeout=20').read()"
    """
    _deploy(shared_platform, tmp_path, "probe", {"run.sh": script}, "sh function/run.sh",
            {"mode": "streaming", "SIGNALS": shared_signals.url, "LD_PRELOAD": "/nonexistent/evil.so"})
    with httpx.stream("GET", shared_platform.function_url("probe"), timeout=30, headers={"X-Planted": "yes"}) as r:
        lines = r.iter_lines()
        uid = int(next(lines))
        assert shared_platform.proc is not None
        host_pids = os.readlink("/proc/self/ns/pid")
        leaked = []
        for pid in descendants(shared_platform.proc.pid):
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") != host_pids:
                    continue  # inside the sandbox: the function's own processes
                with open(f"/proc/{pid}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
            except OSError:
                continue
            leaked += [(pid, e) for e in environ if e.startswith((b"LD_PRELOAD=", b"Http_"))]
        shared_signals.open("probe-gate")
        rest = list(lines)
    assert not leaked, leaked
    assert "sees-test-files" not in rest
    if os.geteuid() == 0:
        assert uid != 0


# ---- static ---------------------------------------------------------------------------------
def test_static_serves_files_of_the_handlers_public_folder(deployed: Platform) -> None:
    url = deployed.function_url("site")
    r = httpx.get(url + "/", timeout=30)
    assert (r.status_code, r.text) == (200, "<h1>home</h1>\n")
    assert r.headers["content-type"].startswith("text/html")
    r = httpx.get(url + "/docs/guide.txt", timeout=30)
    assert (r.status_code, r.text) == (200, "the guide\n")
    assert r.headers["content-length"] == "10"
    r = httpx.get(url + "/docs", timeout=30)
    assert (r.status_code, r.headers["location"]) == (301, "docs/")
    assert httpx.get(url + "/docs/", timeout=30).text == "docs index\n"
    assert httpx.head(url + "/docs/guide.txt", timeout=30).status_code == 200


def test_static_missing_file_is_404(deployed: Platform) -> None:
    r = httpx.get(deployed.function_url("site") + "/nope.html", timeout=30)
    assert (r.status_code, r.text) == (404, "404 page not found\n")
    assert httpx.post(deployed.function_url("site") + "/index.html", timeout=30).status_code == 405


@pytest.mark.parametrize("path", ["/../private.txt", "/%2e%2e/private.txt", "/..%2fprivate.txt", "/docs/..%2f..%2fprivate.txt",
                                  "/%2E%2E%2Fprivate.txt", "/docs/../../private.txt", "/..%5cprivate.txt", "/../../index.py"])
def test_static_never_serves_outside_its_folder(deployed: Platform, path: str) -> None:
    # http.client sends the path exactly as written (httpx would resolve the dot-segments).
    host, port = deployed.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/function/site" + path)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status in (400, 404), (resp.status, body)
    assert b"NOT-PUBLIC" not in body


def test_static_path_outside_the_image_is_refused(shared_platform: Platform, tmp_path: Path) -> None:
    from streamfaas.sandbox import bwrap_path

    if bwrap_path() is None:
        pytest.skip("bubblewrap (bwrap) is not usable here; .ci/run installs it")
    _deploy(shared_platform, tmp_path, "escape", {}, None, {"mode": "static", "static_path": "/etc"}, wait=False)
    log = shared_platform.state_dir / "logs" / "escape.log"
    try:
        wait_for(lambda: log.exists() and "must lie in the function's image" in log.read_text(), what="the refusal in the log")
    finally:
        shared_platform.http.request("DELETE", f"{shared_platform.url}/system/functions", json={"functionName": "escape"})


# ---- the watchdog run by hand, as of-watchdog is ------------------------------------------
@pytest.fixture
def static_watchdog(tmp_path: Path) -> Iterator[str]:
    handler = tmp_path / "fn"
    (handler / "public").mkdir(parents=True)
    (handler / "public" / "ok.txt").write_text("ok\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("OUTSIDE-SECRET\n")
    image = ImageStore(tmp_path / "images").build("site", "python3-flask", handler)
    (image.path / "function" / "public" / "link.txt").symlink_to(outside)  # images are immutable; tests may cheat
    with _watchdog_by_hand(image.path, mode="static") as url:
        yield url


@contextmanager
def _watchdog_by_hand(cwd: Path, **settings: str) -> Iterator[str]:
    """``python -m streamfaas.watchdog`` in ``cwd`` with these settings (and port 0); its URL."""
    env = {**os.environ, **settings, "port": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "streamfaas.watchdog"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert " watchdog: watchdog listening on " in line, line
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield line.split()[-1]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_static_does_not_follow_symlinks_out_of_its_folder(static_watchdog: str) -> None:
    assert httpx.get(static_watchdog + "/ok.txt").text == "ok\n"
    r = httpx.get(static_watchdog + "/link.txt")
    assert r.status_code == 404
    assert "OUTSIDE" not in r.text


@pytest.mark.parametrize("mode", ["serializing", "streaming"])
def test_a_watchdog_reached_directly_holds_bodies_it_reads_whole_to_max_body(tmp_path: Path, mode: str) -> None:
    # On Kubernetes any pod can reach a function's watchdog around the gateway: a body it
    # reads whole (serializing mode, or buffer_body) is held to max_body there too.
    with _watchdog_by_hand(tmp_path, mode=mode, fprocess="wc -c", max_body="1000", buffer_body="true") as url:
        assert httpx.post(url, content=b"x" * 500, timeout=10).text.strip() == "500"
        r = httpx.post(url, content=b"x" * 5000, timeout=10)  # said by its Content-Length
        assert r.status_code == 413 and "max_body of 1000 bytes" in r.text

        def endless() -> Iterator[bytes]:  # no Content-Length: held to the limit as it arrives
            for _ in range(1000):
                yield b"y" * 1024

        r = httpx.post(url, content=endless(), timeout=10)
        assert r.status_code == 413, r.text


def test_unknown_mode_is_a_config_error() -> None:
    from streamfaas.config import WatchdogConfig
    from streamfaas.errors import ConfigError

    assert WatchdogConfig.from_env({"mode": "Streaming"}).mode == "streaming"
    assert WatchdogConfig.from_env({}).mode == "http"
    with pytest.raises(ConfigError, match="mode: expected one of http, streaming, serializing, static, got 'afterburn'"):
        WatchdogConfig.from_env({"mode": "afterburn"})
