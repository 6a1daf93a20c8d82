"""OCI function images, built and pushed as faas-cli does, then run without Kubernetes.

The shrinkwrap tests need only this venv. The others need buildah, skopeo and docker-registry
(apt), root, and the cached base image that scripts/oci-base-image.sh makes (the first run takes
about two minutes: mmdebstrap). One image is built for the whole module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from httpx_sse import connect_sse

from oci_registry import Registry, free_port, running_registry
from platform_fixture import REPO, alive, descendants, streamfaas_cmd, wait_for
from streamfaas._oci_build import Buildah
from streamfaas.templates import get_template, template_names

F = TypeVar("F", bound=Callable[..., Any])
BASE_IMAGE = os.environ.get("STREAMFAAS_BASE_IMAGE", "localhost/streamfaas-pybase:bookworm")
BUILDAH = Buildah(root=Path(os.environ["STREAMFAAS_BUILDAH_ROOT"]) if os.environ.get("STREAMFAAS_BUILDAH_ROOT") else None)
TOOLS = ("buildah", "skopeo", "docker-registry", "mmdebstrap")
_missing = [t for t in TOOLS if shutil.which(t) is None] + ([] if os.geteuid() == 0 else ["root"])
_skip_without_tools = pytest.mark.skipif(
    bool(_missing), reason=f"OCI builds need {', '.join(_missing)} (apt-get install buildah skopeo docker-registry mmdebstrap; as root)"
)


def needs_buildah(test: F) -> F:
    return pytest.mark.oci(_skip_without_tools(test))


def _stream_answer() -> list[str]:
    spec = importlib.util.spec_from_file_location("stream_example", REPO / "examples" / "stream" / "handler.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    words = str(module.ANSWER).split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _write_stack(folder: Path, name: str, handler: Path, *, lang: str = "python3-flask", requirements: str | None = None) -> Path:
    shutil.copytree(handler, folder / name, dirs_exist_ok=True)
    if requirements is not None:
        (folder / name / "requirements.txt").write_text(requirements)
    stack = folder / "stack.yaml"
    stack.write_text(f"version: 1.0\nfunctions:\n  {name}:\n    lang: {lang}\n    handler: ./{name}\n    image: {name}:latest\n")
    return stack


def _cli(state: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "STREAMFAAS_STATE_DIR": str(state), **(env or {})}
    return subprocess.run(streamfaas_cmd(*args), capture_output=True, text=True, env=full_env, stdin=subprocess.DEVNULL,
                          timeout=timeout)


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state directory, so the wheels are made once for the module."""
    return tmp_path_factory.mktemp("state")


# ---- shrinkwrap: no buildah needed -----------------------------------------------------------------
def test_shrinkwrap_writes_a_context_that_installs_offline(state: Path, tmp_path: Path) -> None:
    stack = _write_stack(tmp_path, "stream", REPO / "examples" / "stream")
    done = _cli(state, "build", "--shrinkwrap", "-f", str(stack))
    assert done.returncode == 0, done.stderr
    ctx = tmp_path / "build" / "stream"
    for item in ("Dockerfile", "index.py", "streamfaas_serve.py", "requirements.txt", "function/handler.py",
                 "function/__init__.py", "function/requirements.txt"):
        assert (ctx / item).is_file(), item
    assert (ctx / "function" / "handler.py").read_text() == (REPO / "examples" / "stream" / "handler.py").read_text()
    dockerfile = (ctx / "Dockerfile").read_text()
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"ARG BASE_IMAGE=docker.io/library/python:{py}-slim\n" in dockerfile  # the Python the wheels fit
    wheels = sorted(p.name for p in (ctx / "wheels").iterdir())
    assert any(w.startswith("streamfaas-") for w in wheels) and any(w.startswith("aiohttp-") for w in wheels)
    # Everything the image installs resolves from wheels/ alone, for this Python.
    report = tmp_path / "report.json"
    pip = subprocess.run(  # --isolated: no pip.conf or PIP_FIND_LINKS of this machine's helps it
        [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed", "--no-index",
         "--find-links", str(ctx / "wheels"), "--report", str(report), "-q", "streamfaas", "-r", str(ctx / "requirements.txt")],
        capture_output=True, text=True,
    )
    assert pip.returncode == 0, pip.stderr
    installed = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"streamfaas", "aiohttp", "uvloop", "flask", "waitress"} <= installed


def test_template_dockerfiles_run_the_watchdog_with_the_template_fprocess() -> None:
    for name in template_names():
        template = get_template(name)
        text = (template.layers[-1] / "Dockerfile").read_text()
        assert "ARG BASE_IMAGE=python:3.12-slim" in text and "FROM ${BASE_IMAGE}" in text, name
        assert f'ENV fprocess="{template.fprocess}"' in text, name
        assert "--no-index --find-links /opt/streamfaas/wheels" in text, name
        assert "USER 10001:10001" in text and "EXPOSE 8080" in text, name
        assert 'CMD ["/home/app/.venv/bin/python", "-m", "streamfaas.watchdog"]' in text, name


def test_a_build_folder_that_is_a_link_is_refused_and_nothing_behind_it_is_touched(state: Path, tmp_path: Path) -> None:
    # A cloned project shipping `build -> ~` and a function named like a folder there: each
    # build/NAME is emptied and rewritten, so through the link it would be that folder.
    project, victim = tmp_path / "project", tmp_path / "victim"
    (victim / "stream").mkdir(parents=True)
    (victim / "stream" / "keep.txt").write_text("mine")
    project.mkdir()
    stack = _write_stack(project, "stream", REPO / "examples" / "stream")
    (project / "build").symlink_to(victim)
    line = _one_error_line(_cli(state, "build", "--shrinkwrap", "-f", str(stack)))
    assert "is a link" in line
    assert sorted(p.name for p in (victim / "stream").iterdir()) == ["keep.txt"]


def test_missing_template_is_one_line(state: Path, tmp_path: Path) -> None:
    stack = _write_stack(tmp_path, "stream", REPO / "examples" / "stream", lang="cobol")
    line = _one_error_line(_cli(state, "build", "--shrinkwrap", "-f", str(stack)))
    assert "unknown template 'cobol'" in line


def test_missing_handler_is_one_line(state: Path, tmp_path: Path) -> None:
    (tmp_path / "stack.yaml").write_text("version: 1.0\nfunctions:\n  gone:\n    lang: python3-flask\n    handler: ./gone\n")
    line = _one_error_line(_cli(state, "build", "--oci", "-f", str(tmp_path / "stack.yaml")))
    assert "gone" in line and "does not exist" in line


def test_missing_buildah_is_one_line(state: Path, tmp_path: Path) -> None:
    stack = _write_stack(tmp_path, "stream", REPO / "examples" / "stream")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    line = _one_error_line(_cli(state, "build", "--oci", "-f", str(stack), env={"PATH": str(empty)}))
    assert "buildah is not installed" in line


# ---- buildah, a registry, and the image run -------------------------------------------------------
@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real docker-registry on a free loopback port, its storage under the test's folder."""
    if _missing:
        pytest.skip(f"OCI builds need {', '.join(_missing)}")
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def base_image() -> str:
    """The cached base image (made by scripts/oci-base-image.sh when it is not there yet)."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "oci-base-image.sh")], capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-2000:]
    return BASE_IMAGE


@dataclass
class Published:
    image: str
    config: dict[str, object]


@pytest.fixture(scope="module")
def published(state: Path, registry: Registry, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    folder = tmp_path_factory.mktemp("publish")
    stack = _write_stack(folder, "stream", REPO / "examples" / "stream")
    image = f"{registry.host}/stream:latest"
    try:
        done = _cli(state, "publish", "-f", str(stack), "--registry", registry.host, "--base-image", base_image)
        assert done.returncode == 0, done.stderr
        assert f"pushed stream → {image}" in done.stderr
        inspect = subprocess.run(["skopeo", "inspect", "--config", "--tls-verify=false", f"docker://{image}"],
                                 capture_output=True, text=True, timeout=60)
        assert inspect.returncode == 0, inspect.stderr
        yield Published(image, json.loads(inspect.stdout)["config"])
    finally:
        subprocess.run(BUILDAH.argv("rmi", image), capture_output=True)


@needs_buildah
@pytest.mark.timeout(900)
def test_publish_pushes_an_image_whose_entrypoint_is_the_watchdog(published: Published) -> None:
    config = published.config
    assert config["Cmd"] == ["/home/app/.venv/bin/python", "-m", "streamfaas.watchdog"]
    assert config.get("Entrypoint") in (None, [])
    assert config["ExposedPorts"] == {"8080/tcp": {}}
    assert config["User"] == "10001:10001"
    env = dict(str(item).split("=", 1) for item in config["Env"])  # type: ignore[attr-defined]
    assert env["fprocess"] == "python index.py" and env["mode"] == "http" and env["port"] == "8080"


@needs_buildah
@pytest.mark.timeout(900)
def test_pushed_image_runs_its_watchdog_as_non_root_and_streams_in_order(published: Published, tmp_path: Path) -> None:
    """Pulled back from the registry, the image's own command runs (buildah run, chroot
    isolation: no daemon, no Kubernetes) and streams the example's events in order."""
    subprocess.run(BUILDAH.argv("rmi", published.image), capture_output=True)  # so `from` pulls it from the registry
    pulled = subprocess.run(BUILDAH.argv("from", "--quiet", "--pull=always", "--tls-verify=false", f"docker://{published.image}"),
                            capture_output=True, text=True, timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    container = pulled.stdout.strip().splitlines()[-1]
    port = free_port()
    cmd = [str(c) for c in published.config["Cmd"]]  # type: ignore[attr-defined]
    # Only loopback here: the image listens on every address of its pod, which here is the host's.
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            BUILDAH.argv("run", "--isolation", "chroot", "-e", f"port={port}", "-e", "STREAMFAAS_WATCHDOG_HOST=127.0.0.1",
                         container, "--", *cmd),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    started: set[int] = set()
    try:
        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/_/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=60, what="the image's watchdog to be ready")
        started = descendants(proc.pid)
        uids = {_uid(pid) for pid in started if "streamfaas.watchdog" in _cmdline(pid) or "index.py" in _cmdline(pid)}
        assert uids == {10001}, uids  # watchdog and function server, both non-root

        contents: list[str] = []
        arrived: list[float] = []
        with httpx.Client(timeout=30) as client, connect_sse(client, "POST", f"http://127.0.0.1:{port}/", content=b"") as events:
            assert events.response.status_code == 200
            assert events.response.headers["content-type"].startswith("text/event-stream")
            for event in events.iter_sse():
                arrived.append(time.monotonic())
                if event.event == "done":
                    break
                contents.append(json.loads(event.data)["content"])
        assert contents == _stream_answer()  # every event, in order
        assert arrived[-1] - arrived[0] > 1.0  # streamed as written (0.05 s apart), not buffered
    finally:
        started |= descendants(proc.pid)
        _stop_group(proc)
        leftovers = {pid for pid in started if alive(pid)}
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        subprocess.run(BUILDAH.argv("rm", container), capture_output=True)
    assert not leftovers, f"processes left behind: {leftovers}"


@needs_buildah
@pytest.mark.timeout(900)
def test_failing_requirement_is_one_line(state: Path, base_image: str, tmp_path: Path) -> None:
    stack = _write_stack(tmp_path, "badreq", REPO / "examples" / "hello", requirements="streamfaas-no-such-package==1.0\n")
    # A cloned project's build/ may hold a link where the log goes: it is replaced, not written through.
    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    (tmp_path / "build").mkdir(exist_ok=True)
    (tmp_path / "build" / "badreq.buildah.log").symlink_to(victim)
    try:
        line = _one_error_line(_cli(state, "build", "--oci", "-f", str(stack), "--base-image", base_image))
    finally:
        subprocess.run(BUILDAH.argv("rmi", "badreq:latest"), capture_output=True)
    assert "streamfaas-no-such-package" in line and "buildah exit" in line
    log = tmp_path / "build" / "badreq.buildah.log"
    assert log.is_file() and not log.is_symlink()
    assert victim.read_text() == "mine\n"


@needs_buildah
@pytest.mark.timeout(900)
def test_push_to_a_closed_port_is_one_line(state: Path, published: Published, tmp_path: Path) -> None:
    stack = _write_stack(tmp_path, "stream", REPO / "examples" / "stream")
    # Bound and never listening: nothing can answer on this port while the test holds it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{closed.getsockname()[1]}"
        subprocess.run(BUILDAH.argv("tag", published.image, "stream:latest"), check=True, capture_output=True)
        try:
            line = _one_error_line(_cli(state, "push", "-f", str(stack), "--registry", host))
        finally:
            subprocess.run(BUILDAH.argv("rmi", "stream:latest"), capture_output=True)
    assert f"pushing {host}/stream:latest failed" in line and "connection refused" in line


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
