"""``streamfaas``: the command line. Errors print one line and exit non-zero, never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import __version__
from ..errors import StreamfaasError
from . import admin, chat, functions, platform, queue, templates
from ._options import Context
from ._text import lines_printable


def _set_state_dir(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(Context).state_dir = value.resolve()


def _state_dir_option() -> click.Option:
    return click.Option(
        ["--state-dir"], type=click.Path(file_okay=False, path_type=Path), default=None, expose_value=False,
        callback=_set_state_dir, is_eager=True, help="Local state (images, venvs, logs); default $STREAMFAAS_STATE_DIR.",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="streamfaas")
def cli() -> None:
    """streamfaas: functions whose responses stream end to end."""


for command in (*functions.COMMANDS, *chat.COMMANDS, *admin.COMMANDS, *platform.COMMANDS, *queue.COMMANDS, *templates.COMMANDS):
    cli.add_command(command)


def _register_optional() -> None:
    try:
        from ..llm.cli import llm_command
    except ImportError:
        return
    cli.add_command(llm_command, name="llm")


_register_optional()


def _accept_global_options(command: click.Command) -> None:
    """The group's ``--state-dir`` after a subcommand too (``streamfaas list --state-dir X``),
    as faas-cli takes its global flags anywhere. A command with its own keeps it (gateway)."""
    if not any("--state-dir" in p.opts for p in command.params):
        command.params.append(_state_dir_option())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _accept_global_options(sub)


_accept_global_options(cli)


def _error(message: str) -> None:
    """Print an error: its text may be a gateway's or a function's (an HTTP error's body, a
    start error), so its control characters are shown escaped, never sent to the terminal."""
    click.echo(f"Error: {lines_printable(message)}", err=True)


def main(argv: list[str] | None = None) -> int:
    ctx_obj = Context()
    try:
        cli.main(args=argv, prog_name="streamfaas", standalone_mode=False, obj=ctx_obj)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        _error(f"{exc.format_message()}{hint}")
        return 2
    except click.ClickException as exc:
        _error(exc.format_message())
        return 1
    except StreamfaasError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a file the command met that no check foresaw: its name and why, in a line
        where = f"{exc.filename}: " if exc.filename is not None else ""
        _error(f"{where}{exc.strerror or exc}")
        return 1
    finally:
        ctx_obj.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
