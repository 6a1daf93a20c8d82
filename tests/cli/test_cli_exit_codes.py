"""The README's promise: a bad argument prints one line and exits 2, a failed call prints one
line and exits 1; and ``--help`` works on every command.

The commands and their options are discovered from the click group, so a command or option
added later is covered without editing this file. Most cases run ``main()`` in-process (parsing
is pure logic); the cases named in issue 17 and a failed call run the real entry point as a
subprocess.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.types import StringParamType

from platform_fixture import streamfaas_cmd
from streamfaas.cli import _types, cli, main
from streamfaas.cli.queue import queue_config, queue_worker

# Parameters whose value is free text by nature (a name, a glob, a host, a token, a path the
# command creates), so no parameter type could call one bad. Every other parameter has a type
# that rejects a bad value while click parses it.
FREE_TEXT = {
    "name", "names", "function", "call_id",  # names of functions, secrets, jobs
    "stack_file", "handler", "image", "dest",  # files and folders the command reads or creates
    "token", "username", "password", "from_literal", "basic_auth_user",
    "host", "q_nats_url", "q_nats_stream", "model_name", "content_type", "subpath",
}


def walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, (*path, name))


COMMANDS = list(walk(cli))


def bad_value(param: click.Parameter) -> str | None:
    """A value the parameter's type must reject, or None for a flag or free text."""
    kind = param.type
    if isinstance(kind, _types.Duration):
        return "ten"
    if isinstance(kind, _types.Size):
        return "lots"
    if isinstance(kind, _types.KeyValue):  # headers too
        return "novalue"
    if isinstance(kind, _types.HttpMethod):
        return "NOT A METHOD"
    if isinstance(kind, _types.HttpUrl):
        return "127.0.0.1:8080"  # no scheme
    if isinstance(kind, _types.Timestamp):
        return "yesterday"
    if isinstance(kind, _types.TemplateName):
        return "no-such-template"
    if isinstance(kind, click.IntRange) and kind.min is not None:
        return str(kind.min - 1)
    if isinstance(kind, click.IntRange) and kind.max is not None:
        return str(kind.max + 1)
    if isinstance(kind, click.types.IntParamType):
        return "many"
    if isinstance(kind, click.Choice):
        return "bogus"
    if isinstance(kind, click.Path) and kind.exists:
        return "/nonexistent/streamfaas-exit-codes"
    return None


def bad_value_cases() -> Iterator[object]:
    for path, command in COMMANDS:
        for param in command.params:
            value = bad_value(param)
            if value is None:
                continue
            positionals = []
            for arg in command.params:
                if isinstance(arg, click.Argument) and arg.required:
                    positionals.append(value if arg is param else "x")
            if isinstance(param, click.Argument):
                argv, needle = [*path, *positionals], param.human_readable_name
            else:
                option = max(param.opts, key=len)
                argv, needle = [*path, *positionals, option, value], option
            yield pytest.param(argv, needle, id=" ".join([*path, needle]) or needle)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_usage_error(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("Error: ") and needle in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("invoke", "x", "-H", "novalue"), "--header"),
        (("invoke", "x", "--query", "novalue"), "--query"),
        (("gateway", "--queue-backoff", "ten"), "--queue-backoff"),
        (("gateway", "--cold-start-timeout", "xx"), "--cold-start-timeout"),
        (("queue-worker", "--queue-lease", "-1s"), "--queue-lease"),
    ],
)
def test_bad_flag_value_exits_2_with_one_line(args: tuple[str, ...], needle: str) -> None:
    proc = subprocess.run(streamfaas_cmd(*args), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert_one_line_usage_error(proc.returncode, proc.stderr, needle)
    assert proc.stdout == ""


def test_failed_call_with_good_flags_exits_1_with_one_line() -> None:
    proc = subprocess.run(
        streamfaas_cmd("queue", "list", "--gateway", "http://127.0.0.1:9", "--limit", "5"),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "cannot reach the gateway" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("argv", "needle"), list(bad_value_cases()))
def test_every_typed_option_rejects_a_bad_value_with_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_main(argv, capsys)
    assert_one_line_usage_error(code, err, needle)
    assert out == ""


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["queue-worker", "--queue-lease", "0"], "--queue-lease"),  # QueueConfig's own rule, met by the flag's type
        (["gateway", "--queue-backoff", "-1"], "--queue-backoff"),
        (["gateway", "--upstream-timeout", "nan"], "--upstream-timeout"),
        (["invoke", "x", "-H", "Bad Name=1"], "--header"),
        (["invoke", "x", "--callback", "ftp://example.com/"], "--callback"),
        (["logs", "x", "--since", "2024-13-01T00:00:00Z"], "--since"),
        (["llm", "--port", "65536"], "--port"),
        (["secret", "create", "s", "--from-file", "/nonexistent/streamfaas-exit-codes"], "--from-file"),
    ],
)
def test_other_bad_values_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(argv, capsys)
    assert_one_line_usage_error(code, err, needle)


def test_filter_matching_no_function_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fn").mkdir()
    stack = tmp_path / "stack.yaml"
    stack.write_text("version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  fn:\n    lang: python3-flask\n    handler: ./fn\n")
    code, _, err = run_main(["build", "-f", str(stack), "--filter", "nope"], capsys)
    assert_one_line_usage_error(code, err, "--filter")
    assert "no function matches 'nope'" in err


def test_queue_settings_the_config_rejects_are_a_usage_error() -> None:
    """A rule QueueConfig checks across its fields is a bad argument too, not a failed call."""
    with queue_worker.make_context("queue-worker", []) as ctx:
        values = {key: value for key, value in ctx.params.items() if key.startswith("q_")}
        assert queue_config(values).lease == 30.0
        with pytest.raises(click.UsageError, match="queue lease"):
            queue_config({**values, "q_lease": 0.0})


def test_every_value_parameter_has_a_type_or_is_free_text() -> None:
    untyped = [
        f"{' '.join(path)} {param.name}"
        for path, command in COMMANDS
        for param in command.params
        if isinstance(param.type, StringParamType) and param.name not in FREE_TEXT
    ]
    assert untyped == []


def test_the_walk_finds_every_command() -> None:
    paths = {" ".join(path) for path, _ in COMMANDS}
    # A floor, not a list: the walk must reach the commands inside groups, two levels down too.
    assert {"invoke", "gateway", "queue-worker", "queue list", "secret create", "template store pull"} <= paths
    assert len(paths) > 25


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "streamfaas" for p, _ in COMMANDS])
def test_help_on_every_command(path: tuple[str, ...], command: click.Command, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main([*path, "--help"], capsys)
    assert code == 0, err
    assert out.startswith(f"Usage: {' '.join(('streamfaas', *path))} "), out
    assert err == ""
