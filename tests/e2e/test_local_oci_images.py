"""OCI images on the local provider, as faasd runs them: pulled from a registry (or an archive),
unpacked once per digest, and run with the platform's watchdog, the image's rootfs as ``/``.

The image is a FROM-scratch busybox (Debian's busybox-static) built with buildah and pushed to a
real docker-registry on a loopback port, then deployed as ``faas-cli deploy --image
127.0.0.1:PORT/functions/alpine:latest --fprocess=env`` does. Needs buildah, skopeo, umoci,
docker-registry and busybox-static (apt), a working bwrap, and root (as tests/oci does).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from oci_registry import Registry, closed_port, running_registry
from platform_fixture import Platform
from streamfaas._oci_build import Buildah
from streamfaas.sandbox import bwrap_path, function_uid

BUSYBOX = Path("/bin/busybox")
APPLETS = ("env", "cat", "sh", "ls", "id", "grep")
TOOLS = ("buildah", "skopeo", "umoci", "docker-registry")
_missing = [t for t in TOOLS if shutil.which(t) is None]
_missing += [] if BUSYBOX.is_file() else ["busybox-static"]
_missing += [] if bwrap_path() is not None else ["a working bwrap"]
_missing += [] if os.geteuid() == 0 else ["root"]
pytestmark = [
    pytest.mark.oci,
    pytest.mark.skipif(bool(_missing), reason=f"needs {', '.join(_missing)} (apt-get install buildah skopeo umoci "
                                               "docker-registry busybox-static bubblewrap; as root)"),
]
PLATFORM_ONLY_VARS = ("STREAMFAAS_STATE_DIR", "OPENFAAS_URL", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "STREAMFAAS_SANDBOX")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


@pytest.fixture(scope="module")
def buildah(tmp_path_factory: pytest.TempPathFactory) -> Buildah:
    """buildah with a private vfs storage: the test's images touch nobody else's."""
    return Buildah(root=tmp_path_factory.mktemp("buildah"))


def _build_busybox(buildah: Buildah, context: Path, tag: str) -> None:
    """A FROM-scratch image: /bin/busybox and its applets' links, an Env of its own."""
    (context / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, context / "bin" / "busybox")
    for applet in APPLETS:
        (context / "bin" / applet).symlink_to("busybox")
    container = buildah.run(["from", "scratch"], what="buildah from").strip().splitlines()[-1]
    try:
        buildah.run(["copy", container, f"{context}/", "/"], what="buildah copy")
        buildah.run(["config", "--env", "PATH=/bin", "--env", "IMAGE_GREETING=from-image", "--workingdir", "/", container],
                    what="buildah config")
        buildah.run(["commit", "--rm", container, tag], what="buildah commit")
    except BaseException:
        subprocess.run(buildah.argv("rm", container), capture_output=True)
        raise


@pytest.fixture(scope="module")
def alpine(registry: Registry, buildah: Buildah, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``127.0.0.1:PORT/functions/alpine:latest``, pushed to the registry."""
    _build_busybox(buildah, tmp_path_factory.mktemp("busybox"), "localhost/busybox:test")
    image = f"{registry.host}/functions/alpine:latest"
    buildah.run(["push", "--tls-verify=false", "localhost/busybox:test", f"docker://{image}"], what="buildah push")
    return image


def _deploy(p: Platform, name: str, image: str, env_process: str | None = "env", **fields: Any) -> httpx.Response:
    body: dict[str, Any] = {"service": name, "image": image, **fields}
    if env_process is not None:
        body["envProcess"] = env_process
    return p.http.post(f"{p.url}/system/functions", json=body, timeout=120)


def _deployed(p: Platform, name: str, image: str, env_process: str = "env", **fields: Any) -> None:
    r = _deploy(p, name, image, env_process, **fields)
    assert r.status_code == 202, r.text
    p.wait_ready(name)


def _env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _unpacked(p: Platform) -> dict[str, int]:
    """The unpacked images (digest folder → its rootfs's inode)."""
    root = p.state_dir / "oci"
    if not root.is_dir():
        return {}
    return {d.name: (d / "rootfs").stat().st_ino for d in root.iterdir() if len(d.name) == 64 and (d / "rootfs").is_dir()}


# ---- running an image's command ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["streaming", "serializing"])
def test_env_shows_the_image_and_deployment_env_not_the_platforms(shared_platform: Platform, alpine: str, mode: str) -> None:
    p = shared_platform
    _deployed(p, f"env-{mode}", alpine, envVars={"mode": mode, "GREETING": "hello"})
    r = httpx.post(p.function_url(f"env-{mode}"), content=b"", timeout=30)
    assert r.status_code == 200, r.text
    if mode == "streaming":
        assert r.headers.get("transfer-encoding") == "chunked"
    else:
        assert int(r.headers["content-length"]) == len(r.content)
    env = _env_lines(r.text)
    assert env["GREETING"] == "hello"  # the deployment's
    assert env["IMAGE_GREETING"] == "from-image" and env["PATH"] == "/bin"  # the image's
    assert env["fprocess"] == "env" and env["mode"] == mode
    leaked = [k for k in PLATFORM_ONLY_VARS if k in env]
    assert not leaked, f"the platform's environment reached the function: {leaked}"
    assert str(p.state_dir) not in r.text


def test_faas_cli_deploy_shape_runs_env_per_request(shared_platform: Platform, alpine: str) -> None:
    """``faas-cli deploy --image … --fprocess=env``: no mode given, so of-watchdog's default,
    a process per request, streamed."""
    p = shared_platform
    _deployed(p, "plain-env", alpine)
    r = httpx.get(p.function_url("plain-env"), timeout=30)
    assert r.status_code == 200
    env = _env_lines(r.text)
    assert env["mode"] == "streaming" and env["IMAGE_GREETING"] == "from-image"
    listed = p.status("plain-env")
    assert listed["image"] == alpine and listed["envProcess"] == "env"


@pytest.mark.parametrize("mode", ["streaming", "serializing"])
def test_cat_echoes_the_request_body(shared_platform: Platform, alpine: str, mode: str) -> None:
    p = shared_platform
    _deployed(p, f"cat-{mode}", alpine, "cat", envVars={"mode": mode})
    body = os.urandom(1024 * 1024 + 7)  # more than a pipe holds
    r = httpx.post(p.function_url(f"cat-{mode}"), content=body, timeout=60)
    assert r.status_code == 200
    assert r.content == body


def test_the_function_sees_only_its_rootfs_and_holds_no_privilege(shared_platform: Platform, alpine: str) -> None:
    p = shared_platform
    assert p.http.post(p.url + "/system/secrets", json={"name": "oci-key", "value": "oci-s3cret"}).status_code == 201
    script = ("id -u; ls /; grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status; cat /var/openfaas/secrets/oci-key; "
              "echo; echo scratch > /tmp/t && cat /tmp/t; echo x > /bin/x || echo read-only")
    _deployed(p, "probe", alpine, f"sh -c \"{script}\"", secrets=["oci-key"], envVars={"mode": "serializing"})
    r = httpx.get(p.function_url("probe"), timeout=30)
    assert r.status_code == 200, r.text
    lines = r.text.splitlines()
    assert int(lines[0]) == function_uid("probe")  # its own unprivileged uid, as folder images
    assert lines[1:6] == ["bin", "dev", "proc", "tmp", "var"]  # the image and our mount points; no host
    status = dict(line.split(":\t", 1) for line in lines[6:9])
    assert status == {"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1"}
    assert lines[9:] == ["oci-s3cret", "scratch", "read-only"]


# ---- pulls: cached by digest, errors in one line ------------------------------------------------------------
def test_a_second_deploy_of_the_same_digest_reuses_the_rootfs(shared_platform: Platform, alpine: str) -> None:
    p = shared_platform
    _deployed(p, "first", alpine)
    before = _unpacked(p)
    assert before
    _deployed(p, "second", alpine)
    assert _unpacked(p) == before  # no new folder, and the same rootfs (inode) as before
    log = (p.state_dir / "gateway.log").read_text()
    assert log.count(f"pulled {alpine} ") == 1, log[-2000:]
    digest = next(iter(before))
    _deployed(p, "pinned", f"{alpine.rsplit(':', 1)[0]}@sha256:{digest}")
    assert httpx.get(p.function_url("pinned"), timeout=30).status_code == 200
    assert _unpacked(p) == before


def test_pull_from_a_closed_port_is_one_line(shared_platform: Platform) -> None:
    p = shared_platform
    with closed_port() as host:
        started = time.monotonic()
        r = _deploy(p, "unreachable", f"{host}/functions/alpine:latest")
        took = time.monotonic() - started
    assert r.status_code in (400, 502), r.text
    assert len(r.text.strip().splitlines()) == 1 and "connection refused" in r.text, r.text
    assert "Traceback" not in r.text
    assert took < 30, f"took {took:.1f}s"
    assert p.http.get(f"{p.url}/system/function/unreachable").status_code == 404


def test_an_image_the_registry_lacks_is_400(shared_platform: Platform, registry: Registry) -> None:
    r = _deploy(shared_platform, "missing", f"{registry.host}/functions/none:latest")
    assert r.status_code == 400, r.text
    assert len(r.text.strip().splitlines()) == 1 and "not found" in r.text


def test_an_image_without_fprocess_is_400(shared_platform: Platform, alpine: str) -> None:
    r = _deploy(shared_platform, "no-fprocess", alpine, None)
    assert r.status_code == 400, r.text
    assert "has no fprocess: set envProcess" in r.text and len(r.text.strip().splitlines()) == 1


def test_a_docker_archive_deploys_without_a_registry(shared_platform: Platform, alpine: str, buildah: Buildah,
                                                     tmp_path: Path) -> None:
    archive = tmp_path / "busybox.tar"
    buildah.run(["push", "localhost/busybox:test", f"docker-archive:{archive}:functions/alpine:latest"], what="buildah push")
    _deployed(shared_platform, "from-archive", f"docker-archive:{archive}", envVars={"mode": "serializing"})
    assert _env_lines(httpx.get(shared_platform.function_url("from-archive"), timeout=30).text)["IMAGE_GREETING"] == "from-image"


def test_a_restarted_gateway_runs_its_oci_functions_without_the_registry(alpine: str, buildah: Buildah, tmp_path: Path) -> None:
    with running_registry(tmp_path / "registry") as own:
        image = f"{own.host}/functions/alpine:latest"
        buildah.run(["push", "--tls-verify=false", "localhost/busybox:test", f"docker://{image}"], what="buildah push")
        p = Platform(tmp_path / "state").start()
        try:
            _deployed(p, "survivor", image)
        finally:
            p.close()
    # The registry is gone; the function runs what it ran before.
    p = Platform(tmp_path / "state").start()
    try:
        p.wait_ready("survivor")
        assert _env_lines(httpx.get(p.function_url("survivor"), timeout=30).text)["IMAGE_GREETING"] == "from-image"
    finally:
        p.close()


# ---- hostile layers ---------------------------------------------------------------------------------------
def _hostile_layout(folder: Path, outside: Path) -> None:
    """An OCI layout whose one layer tries every way out of the rootfs: ``..`` names, absolute
    names, absolute and relative links to walk through, whiteouts aimed outside, a hard link to
    a host file, and links where the sandbox mounts (/tmp, /var). Busybox comes along to run."""
    up = "../" * 12 + str(outside).lstrip("/")
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode, info.size = kind, link, mode, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
        for applet in APPLETS:
            add(f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
        add("etc/hostname", b"inside\n")
        add("../escape-dotdot", b"pwned")
        add(f"{up}/dotdot-abs", b"pwned")
        add(f"/{str(outside).lstrip('/')}/abs-name", b"pwned")
        add("link", kind=tarfile.SYMTYPE, link=str(outside))
        add("link/through-absolute-link", b"pwned")
        add("rel", kind=tarfile.SYMTYPE, link=up)
        add("rel/through-relative-link", b"pwned")
        add("link/.wh.victim")  # a whiteout through a link: must not delete outside/victim
        add(f"{up}/.wh.victim")
        add("rel/.wh..wh..opq")  # an opaque whiteout through a link: must not empty outside/
        add("hard", kind=tarfile.LNKTYPE, link="../" * 12 + "etc/hostname")
        add("tmp", kind=tarfile.SYMTYPE, link=str(outside))
        add("var", kind=tarfile.SYMTYPE, link=str(outside))
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    data = layer.getvalue()
    config = {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
              "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(data).hexdigest()}"]}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
                "layers": [blob(data, "application/vnd.oci.image.layer.v1.tar")]}
    entry = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    entry["annotations"] = {"org.opencontainers.image.ref.name": "hostile"}
    (folder / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def test_a_hostile_layer_never_writes_outside_the_rootfs(shared_platform: Platform, registry: Registry, tmp_path: Path) -> None:
    p = shared_platform
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("still here")
    _hostile_layout(tmp_path / "layout", outside)
    image = f"{registry.host}/functions/hostile:latest"
    pushed = subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:hostile",
                             f"docker://{image}"], capture_output=True, text=True, timeout=120)
    assert pushed.returncode == 0, pushed.stderr
    before = set(_unpacked(p))

    _deployed(p, "hostile", image, "sh -c 'ls -A /tmp; ls /var/openfaas; cat /hard'", envVars={"mode": "serializing"})
    r = httpx.get(p.function_url("hostile"), timeout=30)
    assert (r.status_code, r.text) == (200, "secrets\ninside\n")  # an empty /tmp; its own secrets; its own file

    assert sorted(os.listdir(outside)) == ["victim"] and (outside / "victim").read_text() == "still here"
    assert sorted(os.listdir(tmp_path)) == ["layout", "outside"]
    (digest,) = set(_unpacked(p)) - before
    unpacked = p.state_dir / "oci" / digest
    assert sorted(os.listdir(unpacked)) == ["image.json", "rootfs"]  # ../escape-dotdot did not land here
    assert sorted(os.listdir(p.state_dir / "oci")) == sorted([*_unpacked(p), "tags"])
    rootfs = unpacked / "rootfs"
    for mount_point in ("tmp", "var", "var/openfaas"):  # bwrap mounts there: real folders, no links out
        assert (rootfs / mount_point).is_dir() and not (rootfs / mount_point).is_symlink(), mount_point
    for planted in (rootfs / "link", rootfs / "rel"):  # left as links, pointing nowhere on this side
        assert planted.is_symlink()
    assert all(rootfs in path.parents for path in p.state_dir.rglob("escape-dotdot"))
