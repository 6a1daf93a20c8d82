"""Deploy, update (rolling), scale (to zero and back), remove, and restart of the gateway."""

from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path

import httpx
import pytest

from platform_fixture import Platform, alive, descendants, wait_for

VERSIONED = """
import os

def handle(req):
    return os.environ["VERSION"] + ":" + str(os.getpid())
"""


def _replica_pids(platform: Platform) -> set[int]:
    """Watchdogs and function servers below the gateway (the fork server is not a replica)."""
    assert platform.proc is not None
    return descendants(platform.proc.pid) - set(_fork_servers(platform))


def _fork_servers(platform: Platform) -> list[int]:
    assert platform.proc is not None
    gateway = platform.proc.pid
    return [pid for pid in descendants(gateway) if _parent(pid) == gateway and _cmdline(pid).endswith(b"streamfaas.watchdog.fork_server")]


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().rstrip(b"\0").rsplit(b"\0", 1)[0]
    except OSError:
        return b""


def test_scale_to_zero_and_back_on_first_request(platform: Platform, tmp_path: Path) -> None:
    handler = platform.write_function(tmp_path, "napper", VERSIONED)
    platform.deploy("napper", handler, env={"VERSION": "v1"})
    before = _replica_pids(platform)
    assert before
    r = platform.http.post(f"{platform.url}/system/scale-function/napper", json={"serviceName": "napper", "replicas": 0})
    assert r.status_code == 202
    status = platform.status("napper")
    assert status["replicas"] == 0 and status["availableReplicas"] == 0
    wait_for(lambda: not any(alive(p) for p in before), what="replicas to stop")
    # The first request waits for the cold start instead of failing.
    r = httpx.post(platform.function_url("napper"), content=b"", timeout=60)
    assert r.status_code == 200
    assert r.text.startswith("v1:")
    assert platform.status("napper")["replicas"] == 1


def test_scale_out_balances_across_replicas(platform: Platform, tmp_path: Path) -> None:
    handler = platform.write_function(tmp_path, "wide", VERSIONED)
    platform.deploy("wide", handler, env={"VERSION": "v1"})
    r = platform.http.post(f"{platform.url}/system/scale-function/wide", json={"replicas": 3})
    assert r.status_code == 202
    platform.wait_ready("wide", replicas=3)
    served = {httpx.get(platform.function_url("wide"), timeout=30).headers["x-served-by"] for _ in range(9)}
    assert len(served) == 3


def test_rolling_update_fails_no_request(platform: Platform, tmp_path: Path) -> None:
    handler = platform.write_function(tmp_path, "rolling", VERSIONED)
    platform.deploy("rolling", handler, env={"VERSION": "v1"})
    failures: list[str] = []
    versions: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set() and len(versions) < 5000:
                try:
                    r = client.get(platform.function_url("rolling"))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                else:
                    versions.append(r.text.split(":")[0])

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: len(versions) > 20, what="load to flow")
        platform.deploy("rolling", handler, env={"VERSION": "v2"}, wait=False)
        wait_for(lambda: versions[-1] == "v2" and versions[-20:].count("v2") == 20, what="v2 to take over")
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert failures == []
    assert "v1" in versions and "v2" in versions
    assert platform.status("rolling")["envVars"] == {"VERSION": "v2"}


def test_remove_stops_replicas_and_forgets_function(platform: Platform, tmp_path: Path) -> None:
    handler = platform.write_function(tmp_path, "gone", VERSIONED)
    platform.deploy("gone", handler, env={"VERSION": "v1"})
    pids = _replica_pids(platform)
    r = platform.http.request("DELETE", f"{platform.url}/system/functions", json={"functionName": "gone"})
    assert r.status_code == 202
    wait_for(lambda: not any(alive(p) for p in pids), what="replicas to stop")
    assert httpx.get(platform.function_url("gone"), timeout=10).status_code == 404
    assert platform.http.get(f"{platform.url}/system/function/gone").status_code == 404


def test_restarted_gateway_finds_its_functions(platform: Platform, tmp_path: Path) -> None:
    handler = platform.write_function(tmp_path, "durable", VERSIONED)
    platform.deploy("durable", handler, env={"VERSION": "v7"})
    platform.stop()
    platform.start()
    platform.wait_ready("durable")
    r = httpx.get(platform.function_url("durable"), timeout=30)
    assert r.text.startswith("v7:")


def test_killed_gateway_leaves_no_replicas(tmp_path: Path) -> None:
    import signal

    platform = Platform(tmp_path / "state").start()
    try:
        handler = platform.write_function(tmp_path, "orphan", VERSIONED)
        platform.deploy("orphan", handler, env={"VERSION": "v1"})
        pids = _replica_pids(platform)
        assert len(pids) >= 2  # watchdog + function server
        platform.stop(signal.SIGKILL)  # asserts every replica process is gone
    finally:
        platform.close()


def test_python3_http_template_dict_and_stream(platform: Platform, tmp_path: Path) -> None:
    code = """
    from flask import Response

    def handle(event, context):
        if event.query.get("stream"):
            return Response((f"{i}\\n" for i in range(3)), mimetype="text/plain")
        return {"statusCode": 201, "body": {"method": event.method, "body": event.body.decode()}, "headers": {"X-H": "1"}}
    """
    handler = platform.write_function(tmp_path, "httpfn", code)
    platform.deploy("httpfn", handler, lang="python3-http")
    r = httpx.post(platform.function_url("httpfn"), content=b"payload", timeout=30)
    assert r.status_code == 201
    assert r.headers["x-h"] == "1"
    assert r.json() == {"method": "POST", "body": "payload"}
    r = httpx.get(platform.function_url("httpfn") + "?stream=1", timeout=30)
    assert r.text == "0\n1\n2\n"


def _tiny_wheel(folder: Path, version: str) -> Path:
    """A pure-Python wheel made on the spot, so installing requirements needs no network
    (tests/conftest.py sets PIP_NO_INDEX: nothing is fetched mid-run)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sftinydep-{version}-py3-none-any.whl"
    info = f"sftinydep-{version}.dist-info"
    files = {
        "sftinydep/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: sftinydep\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: streamfaas-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
        wheel.writestr(f"{info}/RECORD", "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]))
    return path


def _venvs(platform: Platform) -> set[str]:
    return {p.name for p in (platform.state_dir / "venvs").iterdir() if not p.name.startswith(".")}


def test_function_with_requirements_gets_its_own_venv_cached_by_their_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = """
    import sftinydep

    def handle(req):
        return sftinydep.VERSION
    """
    _tiny_wheel(tmp_path / "wheels", "1.2.3")
    # A local wheel reaches a function's venv through the operator's wheelhouse (a path in
    # requirements.txt is refused: tests/security/test_requirements_install.py).
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    with Platform(tmp_path / "state").start() as platform:
        _venv_cache_by_hash(platform, tmp_path, code)


def _venv_cache_by_hash(platform: Platform, tmp_path: Path, code: str) -> None:
    platform.deploy("plain", platform.write_function(tmp_path, "plain", "def handle(req):\n    return 'plain'\n"))
    plain_venvs = _venvs(platform)
    platform.deploy("withdeps", platform.write_function(tmp_path, "withdeps", code, requirements="sftinydep==1.2.3\n"))
    assert httpx.get(platform.function_url("withdeps"), timeout=30).text == "1.2.3"
    with_deps = _venvs(platform) - plain_venvs
    assert len(with_deps) == 1
    # Same requirements (comments and order aside): the same venv, not a second install.
    platform.deploy("samedeps", platform.write_function(tmp_path, "samedeps", code, requirements="# same\nsftinydep==1.2.3\n"))
    assert httpx.get(platform.function_url("samedeps"), timeout=30).text == "1.2.3"
    assert _venvs(platform) - plain_venvs == with_deps
    # A function without requirements installs nothing: its venv holds only the link to the
    # platform's packages (Flask and waitress come from there).
    [plain] = plain_venvs
    site = next((platform.state_dir / "venvs" / plain / "lib").glob("python*/site-packages"))
    assert sorted(p.name for p in site.iterdir()) == ["_streamfaas_platform.pth"]
    # The function's package is in its own venv only.
    [deps] = with_deps
    assert list((platform.state_dir / "venvs" / deps / "lib").glob("python*/site-packages/sftinydep"))


def _smaps_rollup(pid: int) -> dict[str, int]:
    """kB figures from /proc/PID/smaps_rollup (Rss, Pss, Private_Clean …)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def test_watchdog_is_forked_by_the_fork_server_and_shares_its_pages(platform: Platform, tmp_path: Path) -> None:
    handler = platform.write_function(tmp_path, "shared", VERSIONED)
    platform.deploy("shared", handler, env={"VERSION": "v1"})
    platform.deploy("shared2", handler, env={"VERSION": "v1"})
    [server] = _fork_servers(platform)
    watchdogs = [pid for pid in descendants(server) if _parent(pid) == server]
    assert len(watchdogs) == 2
    for pid in watchdogs:
        memory = _smaps_rollup(pid)
        private = memory["Private_Clean"] + memory["Private_Dirty"]
        # A watchdog spawned with `python -I` holds ~24 MiB of private pages (its imports);
        # a forked one shares those with the fork server and its siblings.
        assert private < 12 * 1024, memory
        assert memory["Pss"] < memory["Rss"] * 0.7, memory


def test_killed_fork_server_leaves_no_orphans_and_replicas_come_back(platform: Platform, tmp_path: Path) -> None:
    import signal

    handler = platform.write_function(tmp_path, "phoenix", VERSIONED)
    platform.deploy("phoenix", handler, env={"VERSION": "v1"})
    before = _replica_pids(platform)
    assert len(before) >= 2  # watchdog + function server
    [server] = _fork_servers(platform)
    os.kill(server, signal.SIGKILL)
    # Its watchdogs die with it (their parent-death signal), and their functions with them:
    # nothing is left running outside the gateway's tree.
    wait_for(lambda: not any(alive(p) for p in before), 15, what="the old replica's processes to exit")
    # The provider restarts the fork server and the replica, which serves again.
    wait_for(lambda: len(_fork_servers(platform)) == 1 and _fork_servers(platform) != [server], what="a new fork server")
    platform.wait_ready("phoenix")
    assert httpx.get(platform.function_url("phoenix"), timeout=30).text.startswith("v1:")
    after = _replica_pids(platform)
    assert after and not after & before
    [server] = _fork_servers(platform)
    assert any(_parent(pid) == server for pid in after)  # forked again, not spawned directly


def test_a_function_removed_while_its_replicas_start_is_gone_at_once(platform: Platform, tmp_path: Path) -> None:
    # A replica stopped while its watchdog is being forked: the SIGTERM must reach a watchdog
    # that has no process group of its own yet (or the remove waits out the drain, 35 s), and
    # one whose fork was reported just as the stop came must not be left running.
    assert platform.proc is not None
    gateway = platform.proc.pid
    before = descendants(gateway)
    for i in range(12):
        name = f"quick-remove-{i}"
        (tmp_path / name).mkdir()
        platform.images.build(f"{name}:latest", "python3-flask", tmp_path / name)
        body = {"service": name, "image": f"{name}:latest", "envProcess": "cat", "envVars": {"mode": "serializing"},
                "labels": {"com.openfaas.scale.min": "2"}}
        assert platform.http.post(f"{platform.url}/system/functions", json=body).status_code == 202
        r = platform.http.request("DELETE", f"{platform.url}/system/functions", json={"functionName": name}, timeout=10)
        assert r.status_code == 202, r.text

    def left() -> set[int]:  # besides the fork server, a child of the gateway that may start late
        return {p for p in descendants(gateway) - before if _parent(p) != gateway}

    wait_for(lambda: not left(), 15, what="the removed functions' watchdogs to exit")


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def _processes_under(folder: Path) -> list[int]:
    """Processes whose working directory is below ``folder`` (a replica's function runs in its
    image's folder there), wherever they are in the process tree."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd").startswith(str(folder)):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_a_gateway_stopped_while_its_replicas_start_leaves_no_function_running(tmp_path: Path) -> None:
    """Stopped at once after a deploy, the watchdog is still starting its function: a stop it
    gets then is honoured once it can, with the function, never by dying and leaving it."""
    for attempt in range(3):
        state = tmp_path / f"state{attempt}"
        with Platform(state).start() as p:
            handler = p.write_function(tmp_path, f"quick{attempt}", "def handle(req):\n    return 'x'\n")
            p.deploy(f"quick{attempt}", handler, wait=False)
        wait_for(lambda state=state: not _processes_under(state), 15, what=f"no process left in {state}")
