"""Commands for templates: ``new`` and ``template store list|pull``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..errors import ConfigError
from ..stack import append_function
from ..templates import get_template, lay_for_faas_cli, list_templates, why_not_write
from ._types import TEMPLATE


@click.command()
@click.argument("name")
@click.option("--lang", type=TEMPLATE, required=True, help="Template to start from (see `streamfaas template store list`).")
@click.option("-a", "--append", "stack_file", default="stack.yaml", show_default=True, help="stack.yaml to add the function to.")
@click.option("--handler", default=None, help="Folder for the handler (default: ./NAME).")
@click.option("--image", default=None, help="Image name (default: NAME:latest).")
def new(name: str, lang: str, stack_file: str, handler: str | None, image: str | None) -> None:
    """Create a function from a template and add it to stack.yaml."""
    template = get_template(lang)
    folder = Path(handler or name)
    if folder.exists() or folder.is_symlink():  # a dangling link too: the copy would go through it
        raise ConfigError(f"folder {str(folder)!r} already exists; choose another name or --handler")
    stack_path = Path(stack_file)
    handler_ref = "./" + folder.as_posix().removeprefix("./")
    source = template.layers[-1] / "function"
    for layer in reversed(template.layers):
        if (layer / "function").is_dir():
            source = layer / "function"
            break
    # The folder first: stack.yaml never lists a function whose folder could not be made.
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    try:
        append_function(stack_path, name, lang, handler_ref, image or f"{name}:latest")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # it was made just now, by us
        raise
    click.echo(f"created {folder}/ from {lang} and added {name} to {stack_path}")
    laid = lay_for_faas_cli(lang, stack_path.parent)
    if laid is not None:
        click.echo(f"laid the template into {laid}/ (faas-cli deploy -f reads its template.yml)")
    if template.welcome_message:
        click.echo(template.welcome_message.rstrip())


@click.group()
def template() -> None:
    """Language templates (shipped inside streamfaas)."""


@template.group()
def store() -> None:
    """The template store."""


@store.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def store_list(as_json: bool) -> None:
    """List the templates."""
    items = list_templates()
    if as_json:
        click.echo(json.dumps([{"template": t.name, "description": t.description} for t in items], indent=2))
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("NAME")
    table.add_column("SOURCE")
    table.add_column("DESCRIPTION")
    for t in items:
        table.add_row(t.name, "streamfaas", t.description)
    Console(width=200).print(table)


@store.command(name="pull")
@click.argument("name", type=TEMPLATE)
@click.option("--dir", "dest", default="template", show_default=True, help="Folder to copy into.")
def store_pull(name: str, dest: str) -> None:
    """Copy a template into ./template/NAME to read or customise it."""
    t = get_template(name)
    why = why_not_write(Path(dest), name)
    if why is not None:
        raise ConfigError(why)
    target = Path(dest) / name
    t.write_folder(target)
    click.echo(f"pulled {name} into {target}")


COMMANDS = [new, template]
