"""Image names as a deploy request gives them: hostile ones are refused before skopeo sees them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamfaas.errors import BadRequest
from streamfaas.provider.oci_rootfs import parse_reference, prepare_rootfs, rooted


@pytest.mark.parametrize(
    "image",
    [
        "127.0.0.1:5000/functions/alpine:latest --src-creds=u:p",  # an option smuggled after a space
        "127.0.0.1:5000/a\n--debug",
        "-127.0.0.1:5000/functions/alpine",  # read by skopeo as an option
        "127.0.0.1:5000/a@sha256:not-a-digest",
        "docker-archive:relative/image.tar",  # archives are named by absolute path only
        "docker-archive:../../etc/shadow",
        "oci-archive:/tmp/a b.tar",
        "oci-archive:/tmp/image.tar",  # skopeo unpacks it as root, through the links it holds
        "docker-archive:/tmp/x.tar\x00",
    ],
)
def test_hostile_image_references_are_refused(image: str) -> None:
    with pytest.raises(BadRequest, match="invalid image"):
        parse_reference(image)


def test_folder_images_and_registry_images_are_told_apart() -> None:
    assert parse_reference("hello:latest") is None  # a folder image of the local store
    ref = parse_reference("127.0.0.1:5000/functions/alpine:latest")
    assert ref is not None and ref.source == "docker://127.0.0.1:5000/functions/alpine:latest"
    assert ref.tls_verify is False  # loopback only; any other registry is verified
    remote = parse_reference("registry.example.com/functions/alpine:latest")
    assert remote is not None and remote.tls_verify is True


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_an_archive_that_is_not_a_file_is_refused_before_skopeo_waits_on_it(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "image.tar"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(BadRequest, match="takes a file"):
        parse_reference(f"docker-archive:{path}")


@pytest.mark.parametrize(
    ("workdir", "made"),
    [
        ("/../../../escaped/sub", "escaped/sub"),  # ".." stays at "/", as in a container (unresolved: tmp_path/escaped)
        ("x/../../../../escaped", "escaped"),
        ("//srv/./app/../data", "srv/data"),
        ("/", ""),
    ],
)
def test_an_images_working_dir_is_made_inside_its_rootfs_only(tmp_path: Path, workdir: str, made: str) -> None:
    rootfs = tmp_path / "images" / "x" / "rootfs"
    rootfs.mkdir(parents=True)
    prepare_rootfs(rootfs, workdir)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "images" / "escaped").exists()
    assert (rootfs / made).is_dir()
    assert rooted(workdir) == "/" + made
