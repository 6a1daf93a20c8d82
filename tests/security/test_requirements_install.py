"""A function's requirements.txt is untrusted input: ``pip install`` at deploy time runs its
build backends in the function sandbox (never as root, never seeing the state directory or the
gateway's environment), lines that make pip read local files are refused, and no error quotes
what pip printed. A backend that floods its output or hangs costs the gateway a bounded tail of
memory, the log a bounded piece, and the deploy at most the install's timeout; a timed-out or
cancelled install leaves no process behind, and other deploys do not wait for it."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import stat
import tarfile
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from platform_fixture import Platform, Signals, wait_for
from streamfaas.provider.logs import split_line
from streamfaas.provider.venvs import BUILD_LOG_MAX, PIP_TIMEOUT_ENV
from streamfaas.sandbox import bwrap_path, function_uid

CANARY = "gateway-env-CANARY-7731"
SECRET = "S3CR3T-VALUE-42"

# The build backend of a package the function's requirements name: it reports what it can see
# to the test (over the network: the sandbox shares it), then fails the build.
BACKEND = """
import json, os, urllib.request

def _try(path):
    try:
        with open(path) as f:
            return "read: " + f.read()
    except Exception as exc:
        return "denied: " + type(exc).__name__

paths = json.loads(PATHS)
report = {
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
    "env": dict(os.environ),
    "read": {p: _try(p) for p in paths["read"]},
    "exists": {p: os.path.exists(p) for p in paths["exists"]},
    "listdir": {p: sorted(os.listdir(p)) for p in paths["listdir"]},
}
urllib.request.urlopen(urllib.request.Request(SIGNALS + "/mark/backend", data=json.dumps(report).encode(), method="POST"), timeout=10)

def _fail(*args, **kwargs):
    raise RuntimeError("backend saw: " + json.dumps(report))

get_requires_for_build_wheel = build_wheel = build_sdist = prepare_metadata_for_build_wheel = _fail
"""


def _probe_sdist(folder: Path, signals_url: str, paths: dict[str, list[str]]) -> None:
    """``sfprobe-1.0.tar.gz`` in ``folder`` (the operator's PIP_FIND_LINKS wheelhouse), its
    backend ``BACKEND``."""
    _backend_sdist(folder, "sfprobe", f"PATHS = {json.dumps(paths)!r}\nSIGNALS = {signals_url!r}\n" + BACKEND)


def _backend_sdist(folder: Path, name: str, backend: str) -> None:
    """``NAME-1.0.tar.gz`` in ``folder`` (the operator's wheelhouse): an sdist with ``requires = []``
    and its build backend in the sdist itself (``backend-path = ["."]``), the module text ``backend``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "evilbackend"\nbackend-path = ["."]\n',
        "evilbackend.py": backend,
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
    }
    with tarfile.open(folder / f"{name}-1.0.tar.gz", "w:gz") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-1.0/{path}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# Writes 50 MiB to stderr (lines, then one line 5 MiB long), a last line, then fails the build.
FLOOD_BACKEND = """
import sys

def _flood(*args, **kwargs):
    line = "flood " * 170 + "\\n"
    for _ in range(45 * 1024):
        sys.stderr.write(line)
    sys.stderr.write("y" * (5 << 20))
    sys.stderr.write("\\nFLOOD-END\\n")
    sys.stderr.flush()
    raise RuntimeError("flooded")

get_requires_for_build_wheel = get_requires_for_build_sdist = build_wheel = build_sdist = _flood
"""

# Tells the test it runs, then becomes a process that sleeps for ever, MARKER on its command line.
HANG_BACKEND = """
import os, sys, urllib.request

def _hang(*args, **kwargs):
    urllib.request.urlopen(urllib.request.Request(SIGNALS + "/mark/hang", data=b"x", method="POST"), timeout=10)
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(10 ** 6)", MARKER])

get_requires_for_build_wheel = get_requires_for_build_sdist = build_wheel = build_sdist = _hang
"""


def _memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _leftovers(marker: str, uid: int | None, state: Path) -> list[str]:
    """Live processes of the install: the backend's (MARKER on its command line), pip's or the
    sandbox's (``pip install`` of a venv below ``state``), or any of the function's uid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith("Z"):
            continue
        ours = uid is not None and int(fields["Uid"].split()[0]) == uid
        if marker.encode() in cmdline or (b"pip\0install" in cmdline and str(state).encode() in cmdline) or ours:
            found.append(f"{entry}: {cmdline.replace(bytes(1), b' ')[:200]!r}")
    return found


def _deploy(p: Platform, tmp_path: Path, name: str, requirements: str) -> tuple[int, str]:
    handler = p.write_function(tmp_path, name, "def handle(req):\n    return 'ok'\n", requirements=requirements)
    p.images.build(f"{name}:latest", "python3-flask", handler)
    r = p.http.post(f"{p.url}/system/functions", json={"service": name, "image": f"{name}:latest"})
    return r.status_code, r.text


@pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap (bwrap) is not usable here; .ci/run installs it")
def test_build_backend_in_requirements_runs_sandboxed_without_root_or_state(
        tmp_path: Path, signals: Signals, monkeypatch: pytest.MonkeyPatch) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    state = tmp_path / "state"
    home = Path(os.path.expanduser("~"))
    paths = {
        "read": [str(state / "auth" / "admin-password"), str(state / "secrets" / "probe-secret"), "/etc/shadow"],
        # The venv being built lies below the state directory, so its parents are there (empty).
        "exists": [str(state / name) for name in ("auth", "secrets", "queue.db", "functions", "logs", "images", "run")]
                  + [str(home / ".openfaas"), "/home", str(tmp_path / "backendprobe")],
        "listdir": [str(state)],
    }
    _probe_sdist(wheelhouse, signals.url, paths)
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))  # the operator's wheelhouse, read-only inside
    monkeypatch.setenv("STREAMFAAS_TEST_CANARY", CANARY)  # the gateway's environment: pip must not see it
    with Platform(state).start() as p:
        r = p.http.post(f"{p.url}/system/secrets", json={"name": "probe-secret", "value": SECRET})
        assert r.status_code in (200, 201, 202), r.text
        status, body = _deploy(p, tmp_path, "backendprobe", "sfprobe==1.0\n")
        [mark] = signals.wait_marks("backend", 1, timeout=60)
        report = json.loads(mark)
        assert status == 500, body
        assert "pip install failed for function 'backendprobe'" in body
        log = (state / "logs" / "backendprobe.log").read_text()
    # The backend ran (its failure is in the function's log), but not as root ...
    assert "backend saw:" in log
    assert report["uid"] != 0 and report["euid"] != 0 and report["gid"] != 0, report
    # ... and saw nothing of the state directory, the home folder or the test's files ...
    assert all(v.startswith("denied") for v in report["read"].values()), report["read"]
    assert not any(report["exists"].values()), report["exists"]
    assert report["listdir"] == {str(state): ["venvs"]}, report["listdir"]
    # ... nor the gateway's environment: only what the platform chose, the wheelhouse included.
    assert CANARY not in json.dumps(report["env"])
    assert report["env"]["PIP_FIND_LINKS"] == str(wheelhouse)
    assert not {"STREAMFAAS_STATE_DIR", "OPENFAAS_URL", "STREAMFAAS_TEST_CANARY"} & set(report["env"])
    # The API's error quotes none of pip's output (the backend's traceback holds what it read).
    assert "backend saw" not in body and "RuntimeError" not in body and SECRET not in body


def test_requirements_that_read_local_files_are_refused_without_quoting_them(tmp_path: Path) -> None:
    with Platform(tmp_path / "state").start() as p:
        r = p.http.post(f"{p.url}/system/secrets", json={"name": "db-password", "value": SECRET})
        assert r.status_code in (200, 201, 202), r.text
        secret_file = p.state_dir / "secrets" / "db-password"
        assert secret_file.read_text() == SECRET
        other = tmp_path / "host-file.txt"
        other.write_text(SECRET + "\n")
        lines = [f"-r {secret_file}", f"--constraint={secret_file}", f"-c{other}", str(other), f"file://{other}",
                 f"sfx @ file://{other}", f"-e {tmp_path}", f"--find-links {tmp_path}", "./local-package", "~/pkg"]
        for number, line in enumerate(lines):
            name = f"refused{number}"
            status, body = _deploy(p, tmp_path, name, textwrap.dedent(f"""\
                # ordinary lines pass the check
                flask
                {line}
                """))
            assert status == 400, (line, status, body)
            assert "requirements.txt line 3 is refused" in body, (line, body)
            assert SECRET not in body and str(secret_file) not in body and str(tmp_path) not in body, (line, body)
            assert name not in p.http.get(f"{p.url}/system/functions").text
        # A line the check lets through still gets no pip output quoted: pip's complaint about
        # a package no index has goes to the log, the API names the requirement only.
        status, body = _deploy(p, tmp_path, "notfound", "sf-no-such-package==9.9\n")
        assert status == 500, body
        assert "pip install failed for function 'notfound'" in body
        assert "no matching distribution found for sf-no-such-package" in body
        assert "ERROR" not in body


def test_requirements_from_the_operators_wheelhouse_install_into_a_venv_functions_cannot_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    info = "sfwheel-2.0.dist-info"
    files = {"sfwheel/__init__.py": "VERSION = '2.0'\n", f"{info}/METADATA": "Metadata-Version: 2.1\nName: sfwheel\nVersion: 2.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: streamfaas-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(wheelhouse / "sfwheel-2.0-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
        wheel.writestr(f"{info}/RECORD", "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]))
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    with Platform(tmp_path / "state").start() as p:
        handler = p.write_function(tmp_path, "wheeled", "import sfwheel\n\ndef handle(req):\n    return sfwheel.VERSION\n",
                                   requirements="sfwheel==2.0\n")
        p.deploy("wheeled", handler)
        assert httpx.get(p.function_url("wheeled"), timeout=30).text == "2.0"
        [venv] = [v for v in (p.state_dir / "venvs").iterdir() if list(v.glob("lib/python*/site-packages/sfwheel"))]
        for path in [venv, *venv.rglob("*")]:
            st = path.lstat()
            assert st.st_uid == os.geteuid() and st.st_gid == os.getegid(), path
            assert stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o7022, (path, oct(st.st_mode))


def test_a_link_the_install_left_as_the_venvs_marker_is_refused_not_followed(tmp_path: Path) -> None:
    # The venv folder is the install's to write (as the function's uid); the gateway then marks
    # it complete as root: through a link planted there, that created any file on the host.
    from streamfaas.errors import DeployError
    from streamfaas.provider.venvs import _mark_complete

    venv, target = tmp_path / "venv", tmp_path / "etc-nologin"
    venv.mkdir()
    (venv / ".complete").symlink_to(target)
    with pytest.raises(DeployError, match="marker"):
        _mark_complete(venv)
    assert not target.exists() and not target.is_symlink()
    clean = tmp_path / "clean"
    clean.mkdir()
    _mark_complete(clean)
    assert (clean / ".complete").is_file()


@pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap (bwrap) is not usable here; .ci/run installs it")
def test_a_backend_flooding_its_output_costs_the_gateway_and_the_log_a_bounded_amount(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    _backend_sdist(wheelhouse, "flood", FLOOD_BACKEND)
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    state = tmp_path / "state"
    with Platform(state).start() as p:
        assert p.proc is not None
        before = _memory_kib(p.proc.pid, "VmHWM")
        status, body = _deploy(p, tmp_path, "flood", "flood==1.0\n")
        grown = _memory_kib(p.proc.pid, "VmHWM") - before
    assert status == 500, body
    assert "pip install failed for function 'flood'" in body and "flood flood" not in body
    # pip passed on all 50 MiB; the gateway kept a tail of it (it held all of it: +100 MiB).
    assert grown < 32 * 1024, f"the gateway's peak memory grew by {grown} KiB"
    log = (state / "logs" / "flood.log").read_bytes()
    assert len(log) <= BUILD_LOG_MAX + 1024, len(log)
    assert b"flood flood" in log and b"[output cut: " in log
    assert b"FLOOD-END" in log.split(b"[output cut: ", 1)[1]  # the end, pip's error with it, is kept
    # Every line is stamped and marked as the build's: none passes for a replica's line.
    for line in log.decode(errors="replace").splitlines():
        stamp, instance, _ = split_line(line)
        assert stamp is not None and instance == "flood[build]", line[:200]


def _hanging_backend(tmp_path: Path, signals: Signals, monkeypatch: pytest.MonkeyPatch) -> str:
    """A wheelhouse (on PIP_FIND_LINKS) whose ``hang`` sdist's backend never returns; the marker
    its process carries, to find it (and what it left) in /proc."""
    marker = f"streamfaas-hang-{os.getpid()}-{time.monotonic_ns()}"
    wheelhouse = tmp_path / "wheelhouse"
    _backend_sdist(wheelhouse, "hang", f"SIGNALS = {signals.url!r}\nMARKER = {marker!r}\n" + HANG_BACKEND)
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    return marker


@pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap (bwrap) is not usable here; .ci/run installs it")
def test_a_hanging_backend_fails_its_deploy_at_the_timeout_leaves_nothing_running_and_blocks_no_other_deploy(
        tmp_path: Path, signals: Signals, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = _hanging_backend(tmp_path, signals, monkeypatch)
    monkeypatch.setenv(PIP_TIMEOUT_ENV, "15s")
    state = tmp_path / "state"
    uid = function_uid("hanger") if os.geteuid() == 0 else None
    with Platform(state).start() as p:
        handler = p.write_function(tmp_path, "hanger", "def handle(req):\n    return 'ok'\n", requirements="hang==1.0\n")
        p.images.build("hanger:latest", "python3-flask", handler)
        answer: list[httpx.Response] = []

        def deploy() -> None:
            with httpx.Client(timeout=120, auth=("admin", p.password)) as client:
                answer.append(client.post(f"{p.url}/system/functions", json={"service": "hanger", "image": "hanger:latest"}))

        started = time.monotonic()
        thread = threading.Thread(target=deploy, daemon=True)
        thread.start()
        signals.wait_marks("hang", 1, timeout=60)
        assert wait_for(lambda: _leftovers(marker, uid, state), 10, what="the hanging backend's process")
        # Meanwhile another function deploys: the install holds no lock the others need.
        p.deploy("bystander", p.write_function(tmp_path, "bystander", "def handle(req):\n    return 'ok'\n"), wait=False)
        assert thread.is_alive(), "the other deploy waited for the hanging install"
        thread.join(60)
        assert not thread.is_alive(), "the deploy never answered"
        took = time.monotonic() - started
        [r] = answer
        assert r.status_code == 500, r.text
        assert "installing requirements.txt took over 15 s" in r.text and "Traceback" not in r.text
        assert took < 15 + 30, took
        assert not _leftovers(marker, uid, state)  # killed, and waited for before the answer
        assert "hanger" not in p.http.get(f"{p.url}/system/functions").text
        p.wait_ready("bystander")


@pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap (bwrap) is not usable here; .ci/run installs it")
def test_a_deploy_whose_client_went_away_leaves_no_install_running(
        tmp_path: Path, signals: Signals, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = _hanging_backend(tmp_path, signals, monkeypatch)
    monkeypatch.delenv(PIP_TIMEOUT_ENV, raising=False)  # the default: minutes, far past this test
    state = tmp_path / "state"
    uid = function_uid("gone") if os.geteuid() == 0 else None
    with Platform(state).start() as p:
        handler = p.write_function(tmp_path, "gone", "def handle(req):\n    return 'ok'\n", requirements="hang==1.0\n")
        p.images.build("gone:latest", "python3-flask", handler)
        body = json.dumps({"service": "gone", "image": "gone:latest"}).encode()
        auth = base64.b64encode(f"admin:{p.password}".encode()).decode()
        host, port = p.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(f"POST /system/functions HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Basic {auth}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            signals.wait_marks("hang", 1, timeout=60)
            assert wait_for(lambda: _leftovers(marker, uid, state), 10, what="the hanging backend's process")
        # The client is gone: its deploy is cancelled, and the install with it.
        wait_for(lambda: not _leftovers(marker, uid, state), 20, what="the install's processes to be gone")
        wait_for(lambda: not [v for v in (state / "venvs").iterdir() if v.name.startswith(".")], 10,
                 what="the unfinished venv to be removed")
        assert "gone" not in p.http.get(f"{p.url}/system/functions").text
