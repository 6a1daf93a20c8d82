from __future__ import annotations

from pathlib import Path

import pytest

from streamfaas.errors import ConfigError
from streamfaas.provider.images import ImageStore
from streamfaas.templates import get_template, template_names


def test_shipped_templates_have_openfaas_layout() -> None:
    assert {"python3-flask", "python3-flask-debian", "python3-http"} <= set(template_names())
    for name in ("python3-flask", "python3-http"):
        folder = get_template(name).layers[-1]
        for item in ("index.py", "requirements.txt", "template.yml", "Dockerfile", "function/handler.py", "function/requirements.txt"):
            assert (folder / item).exists(), f"{name}/{item}"


def test_debian_variant_reuses_flask_handler_with_its_own_dockerfile(tmp_path: Path) -> None:
    t = get_template("python3-flask-debian")
    t.copy_into(tmp_path, with_starter_function=True)
    assert "bookworm" in (tmp_path / "Dockerfile").read_text()
    assert (tmp_path / "index.py").read_text() == (get_template("python3-flask").layers[-1] / "index.py").read_text()
    assert (tmp_path / "function" / "handler.py").exists()


def test_unknown_template_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="python3-flask"):
        get_template("cobol")


def test_build_is_immutable_and_content_addressed(tmp_path: Path) -> None:
    handler = tmp_path / "fn"
    handler.mkdir()
    (handler / "handler.py").write_text("def handle(req):\n    return 'a'\n")
    store = ImageStore(tmp_path / "images")
    first = store.build("fn", "python3-flask", handler)
    assert first.image == "fn:latest"
    again = store.build("fn:latest", "python3-flask", handler)
    assert again.digest == first.digest
    (handler / "handler.py").write_text("def handle(req):\n    return 'b'\n")
    changed = store.build("fn", "python3-flask", handler)
    assert changed.digest != first.digest
    assert (first.path / "function" / "handler.py").read_text().endswith("'a'\n")  # old image untouched
    assert store.resolve("fn").digest == changed.digest
    assert store.resolve(f"fn@{first.digest}").path == first.path
