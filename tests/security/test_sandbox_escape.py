"""A function is untrusted code: from inside its sandbox it cannot gain privileges, write to the
host, read the platform's credentials, or hand its environment to the platform's processes."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from platform_fixture import Platform, descendants
from streamfaas.sandbox import bwrap_path

pytestmark = pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap (bwrap) is not usable here; .ci/run installs it")

PROBE = """
import json, os, subprocess

def _try(fn):
    try:
        return fn()
    except Exception as exc:
        return "denied: " + type(exc).__name__

def _status():
    wanted = ("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")
    return {line.split(":")[0]: line.split(":", 1)[1].split() for line in open("/proc/self/status") if line.split(":")[0] in wanted}

def _remount(path):
    r = subprocess.run(["mount", "-o", "remount,bind,rw", path], capture_output=True, text=True)
    return r.returncode

def _write(path):
    with open(path, "w") as f:
        f.write("pwned")
    return "written"

def handle(req):
    paths = json.loads(os.environ["PROBE_PATHS"])
    out = {"status": _status(), "env": dict(os.environ)}
    out["remount"] = {p: _try(lambda p=p: _remount(p)) for p in paths["remount"]}
    out["write"] = {p: _try(lambda p=p: _write(p)) for p in paths["write"]}
    out["read"] = {p: _try(lambda p=p: open(p).read()) for p in paths["read"]}
    out["exists"] = {p: os.path.exists(p) for p in paths["exists"]}
    out["unshare"] = _try(lambda: subprocess.run(["unshare", "-r", "true"], capture_output=True).returncode)
    out["root_listing"] = sorted(os.listdir("/"))
    return json.dumps(out)
"""


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("sandbox")
    # The admin password lives outside the state directory, as --basic-auth-password-file allows.
    password = root / "admin-password"
    password.write_text("outside-state-SECRET-pw\n")
    os.chmod(password, 0o600)
    p = Platform(root / "state", ("--basic-auth-password-file", str(password)), sandbox=True).start()
    p.password = "outside-state-SECRET-pw"
    p.http.auth = ("admin", p.password)
    try:
        yield p
    finally:
        p.close()


def _probe(p: Platform, tmp_path: Path, name: str, paths: dict[str, list[str]], env: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
    handler = p.write_function(tmp_path, name, PROBE)
    p.deploy(name, handler, env={"PROBE_PATHS": json.dumps(paths), **(env or {})})
    r = httpx.get(p.function_url(name), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_function_holds_no_capability_and_is_not_root(sandboxed: Platform, tmp_path: Path) -> None:
    out = _probe(sandboxed, tmp_path, "caps", {"remount": [], "write": [], "read": [], "exists": []})
    status = out["status"]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap][0], 16) == 0, (cap, status[cap])
    assert status["NoNewPrivs"] == ["1"]
    assert all(int(uid) != 0 for uid in status["Uid"]), status["Uid"]
    assert all(int(gid) != 0 for gid in status["Gid"]), status["Gid"]
    # No user namespace inside: a nested one would give back capabilities over new mounts.
    assert out["unshare"] != 0


def test_function_cannot_remount_host_folders_writable(sandboxed: Platform, tmp_path: Path) -> None:
    p = sandboxed
    venv_site = str(Path(os.__file__).parent)
    image_dir = str(p.state_dir / "images")
    marker = "/usr/streamfaas-escape-test"
    paths = {
        "remount": ["/usr", venv_site],
        "write": [marker, os.path.join(venv_site, "sitecustomize.py"), "/var/openfaas/secrets/x", image_dir + "/x"],
        "read": [],
        "exists": [],
    }
    out = _probe(p, tmp_path, "remount", paths)
    assert all(code != 0 for code in out["remount"].values()), out["remount"]
    assert all(str(v).startswith("denied") for v in out["write"].values()), out["write"]
    assert not os.path.exists(marker)
    assert not os.path.exists(os.path.join(venv_site, "sitecustomize.py"))


def test_function_cannot_read_saved_credentials(sandboxed: Platform, tmp_path: Path) -> None:
    p = sandboxed
    home = Path(os.path.expanduser("~"))
    paths = {
        "remount": [],
        "write": [],
        "read": [
            str(p.state_dir.parent / "admin-password"),  # --basic-auth-password-file
            str(p.state_dir / "auth" / "admin-password"),
            str(home / ".openfaas" / "config.yml"),
            "/etc/shadow",
        ],
        "exists": ["/home", "/srv", "/mnt", "/opt", "/media", str(home / ".openfaas"), str(p.state_dir / "secrets"),
                   str(p.state_dir / "queue.db"), str(tmp_path)],
    }
    out = _probe(p, tmp_path, "creds", paths)
    assert all(str(v).startswith("denied") for v in out["read"].values()), out["read"]
    assert not any(out["exists"].values()), out["exists"]
    assert "outside-state-SECRET-pw" not in json.dumps(out)
    # Only what a function needs at the top: the system, the runtime's folders, its own.
    assert not {"home", "srv", "mnt", "opt", "media", "boot"} & set(out["root_listing"]), out["root_listing"]


def test_function_environment_never_reaches_platform_processes(sandboxed: Platform, tmp_path: Path) -> None:
    """A deployment's PYTHONPATH pointing at a sitecustomize.py must not run in the watchdog
    (outside the sandbox), and LD_PRELOAD must not reach bwrap or setpriv (root)."""
    p = sandboxed
    planted = tmp_path / "planted"
    planted.mkdir()
    ran = tmp_path / "sitecustomize-ran"
    (planted / "sitecustomize.py").write_text(f"open({str(ran)!r}, 'w').write('ran')\n")
    env = {"PYTHONPATH": str(planted), "LD_PRELOAD": str(planted / "evil.so"), "PYTHONSTARTUP": str(planted / "sitecustomize.py")}
    out = _probe(p, tmp_path, "envleak", {"remount": [], "write": [], "read": [], "exists": []}, env=env)
    # The function itself gets its environment …
    assert out["env"]["PYTHONPATH"] == str(planted)
    # … with the platform's CA certificates, not the fork server's empty ones (which it sets
    # for its own imports only).
    assert out["env"].get("SSL_CERT_FILE") != os.devnull and out["env"].get("SSL_CERT_DIR") != os.devnull
    # … and nothing outside its sandbox ran the planted code.
    assert not ran.exists()
    assert p.proc is not None
    leaked = []
    for pid in descendants(p.proc.pid):
        try:
            if os.stat(f"/proc/{pid}").st_uid != os.geteuid():
                continue  # the function's own processes
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith((b"PYTHONPATH=", b"LD_PRELOAD=", b"PYTHONSTARTUP=")):
                leaked.append((pid, entry))
    assert not leaked, leaked


def test_secret_named_like_code_is_refused(sandboxed: Platform) -> None:
    p = sandboxed
    for name in ("sitecustomize.py", "usercustomize.pyc", "evil.pth", "libevil.so", "libc.so.6"):
        r = p.http.post(p.url + "/system/secrets", json={"name": name, "value": "x"})
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert "\n" not in r.text.strip()


def test_secrets_of_a_root_platform_belong_to_the_function_uid(sandboxed: Platform, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a platform that is not root runs functions as its own uid")
    p = sandboxed
    assert p.http.post(p.url + "/system/secrets", json={"name": "owned-key", "value": "owned-value"}).status_code == 201
    handler = p.write_function(tmp_path, "owned", "def handle(req):\n    return open('/var/openfaas/secrets/owned-key').read()\n")
    p.images.build("owned:latest", "python3-flask", handler)
    body = {"service": "owned", "image": "owned:latest", "secrets": ["owned-key"]}
    assert p.http.post(p.url + "/system/functions", json=body).status_code == 202
    p.wait_ready("owned")
    assert httpx.get(p.function_url("owned"), timeout=30).text == "owned-value"
    copy = p.state_dir / "run" / "owned" / "secrets" / "owned-key"
    st = copy.stat()
    assert st.st_uid != 0 and st.st_mode & 0o077 == 0
    # The store itself stays root's alone.
    assert (p.state_dir / "secrets" / "owned-key").stat().st_uid == 0
    assert shutil.which("bwrap")
