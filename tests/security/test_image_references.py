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
