"""Image references cannot lead outside the image store."""

from __future__ import annotations

from pathlib import Path

import pytest

from platform_fixture import Platform


@pytest.mark.parametrize(
    "image",
    [
        "pub:latest@sha256:../../../x",
        "pub@sha256:",
        "pub@sha256:" + "0" * 63,
        "pub@sha256:" + "A" * 64,
        "pub@md5:" + "0" * 32,
        "pub@sha256:" + "0" * 64 + "/../../x",
        "@sha256:" + "0" * 64,
    ],
)
def test_image_digest_cannot_escape_the_store(shared_platform: Platform, tmp_path: Path, image: str) -> None:
    p = shared_platform
    p.images.build("pub:latest", "python3-flask", p.write_function(tmp_path, "pub", "def handle(req):\n    return 'ok'\n"))
    r = p.http.post(p.url + "/system/functions", json={"service": "escape", "image": image})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "\n" not in r.text.strip()
    assert p.http.get(p.url + "/system/function/escape").status_code == 404


def test_pinned_digest_of_a_built_image_still_deploys(shared_platform: Platform, tmp_path: Path) -> None:
    p = shared_platform
    image = p.images.build("pinned:1", "python3-flask", p.write_function(tmp_path, "pinned", "def handle(req):\n    return 'pinned'\n"))
    r = p.http.post(p.url + "/system/functions", json={"service": "pinned", "image": f"pinned:1@{image.digest}"})
    assert r.status_code == 202, r.text
    p.wait_ready("pinned")
    assert p.http.get(p.function_url("pinned")).text == "pinned"


def test_handler_symlink_out_of_its_folder_is_not_built_into_the_image(tmp_path: Path) -> None:
    """A link in an untrusted handler to the builder's saved credentials must not copy them in."""
    import subprocess

    from platform_fixture import streamfaas_cmd

    outside = tmp_path / "config.yml"
    outside.write_text("auths: {password: builder-SECRET}\n")
    handler = tmp_path / "fn"
    handler.mkdir()
    (handler / "handler.py").write_text("def handle(req):\n    return open('function/creds').read()\n")
    (handler / "creds").symlink_to(outside)
    (tmp_path / "stack.yaml").write_text(
        "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  fn:\n    lang: python3-flask\n    handler: ./fn\n    image: fn:latest\n"
    )
    r = subprocess.run(streamfaas_cmd("--state-dir", str(tmp_path / "state"), "build", "-f", str(tmp_path / "stack.yaml")),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "symlink out of the handler folder" in r.stderr and "Traceback" not in r.stderr
    blobs = tmp_path / "state" / "images" / "blobs"
    assert not any("builder-SECRET" in p.read_text(errors="replace") for p in blobs.rglob("*") if p.is_file())
    # A link that stays inside the handler is fine.
    (handler / "creds").unlink()
    (handler / "data.txt").write_text("inside")
    (handler / "creds").symlink_to("data.txt")
    ok = subprocess.run(streamfaas_cmd("--state-dir", str(tmp_path / "state"), "build", "-f", str(tmp_path / "stack.yaml")),
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
