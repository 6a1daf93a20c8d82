"""The template store: the language templates shipped inside the package (no network needed).

A template is a folder with ``template.yml``, ``index.py``, ``requirements.txt``, ``Dockerfile``
and a starter ``function/``. ``base:`` in template.yml names a template whose files it reuses
(python3-flask-debian is python3-flask with another Dockerfile).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

from ..errors import ConfigError

TEMPLATES_DIR = Path(__file__).resolve().parent
COMMON_DIR = TEMPLATES_DIR / "_common"


@dataclass(frozen=True)
class Template:
    name: str
    fprocess: str
    description: str
    welcome_message: str
    layers: tuple[Path, ...]  # the template's folder last, its bases before it

    def copy_into(self, dest: Path, *, with_starter_function: bool) -> None:
        """Lay the template's files into ``dest`` (a build context)."""
        for layer in self.layers:
            for item in layer.iterdir():
                if item.name == "template.yml" or item.name == "__pycache__":
                    continue
                if item.name == "function" and not with_starter_function:
                    continue
                target = dest / item.name
                if item.is_dir():
                    shutil.copytree(item, target, dirs_exist_ok=True, ignore=_IGNORE)
                else:
                    shutil.copy2(item, target)
        for item in COMMON_DIR.iterdir():
            if item.is_file() and item.suffix == ".py":
                shutil.copy2(item, dest / item.name)

    def write_folder(self, target: Path) -> None:
        """The template as a folder of its own, as ``faas-cli template pull`` leaves one: its
        files, its starter function and its ``template.yml``."""
        target.mkdir(parents=True)
        self.copy_into(target, with_starter_function=True)
        for layer in self.layers:  # the template's own template.yml last, over its bases'
            shutil.copy2(layer / "template.yml", target / "template.yml")


_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def why_not_write(folder: Path, name: str) -> str | None:
    """Why template ``name`` may not be written to ``folder/NAME``: something is there, or
    ``folder`` is a link (a cloned project's ``template -> ~/.config``: nothing is written
    through it). None when it may."""
    target = folder / name
    if folder.is_symlink():
        return f"{folder} is a link: no template is written through it"
    if target.exists() or target.is_symlink():
        return f"{target} already exists"
    return None


def lay_for_faas_cli(name: str, root: Path) -> Path | None:
    """Put template ``name`` at ``root/template/NAME``, where ``faas-cli deploy -f`` reads its
    ``template.yml`` (for the fprocess) before it sends anything. Something already there is
    the user's and stays as it is. Returns the folder when it was laid."""
    if why_not_write(root / "template", name) is not None:
        return None
    target = root / "template" / name
    get_template(name).write_folder(target)
    return target


def _read_yml(path: Path) -> dict[str, object]:
    data = YAML(typ="safe").load(path.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a template.yml mapping")
    return data


def template_names(root: Path = TEMPLATES_DIR) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / "template.yml").is_file())


def get_template(name: str, root: Path = TEMPLATES_DIR) -> Template:
    """Resolve a template and its ``base:`` chain; unknown names list what exists."""
    layers: list[Path] = []
    meta: dict[str, object] = {}
    current: str | None = name
    while current:
        folder = root / current
        # Only the templates shipped here: a name is never a path ("../x" or "/x").
        if current not in template_names(root) or not (folder / "template.yml").is_file():
            known = ", ".join(template_names(root))
            if current == name:
                raise ConfigError(f"unknown template {name!r}; available: {known}")
            raise ConfigError(f"template {name!r} names an unknown base {current!r}")
        if folder in layers:
            raise ConfigError(f"template {name!r}: base templates form a loop")
        layers.insert(0, folder)
        data = _read_yml(folder / "template.yml")
        for key, value in data.items():
            meta.setdefault(key, value)
        base = data.get("base")
        current = str(base) if base else None
    return Template(
        name=name,
        fprocess=str(meta.get("fprocess") or "python index.py"),
        description=str(meta.get("description") or ""),
        welcome_message=str(meta.get("welcome_message") or ""),
        layers=tuple(layers),
    )


def list_templates(root: Path = TEMPLATES_DIR) -> list[Template]:
    return [get_template(n, root) for n in template_names(root)]
