"""stack.yaml: OpenFaaS's schema, and errors that name the file, the key and the line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamfaas.errors import StackError
from streamfaas.stack import append_function, load_stack

FULL = """\
version: 1.0
provider:
  name: openfaas
  gateway: ${GATEWAY:-http://127.0.0.1:8080}
functions:
  # the streaming chat function
  chat:
    lang: python3-flask
    handler: ./chat
    image: ${REGISTRY}/chat:0.1
    fprocess: python index.py
    namespace: openfaas-fn
    skip_build: false
    environment:
      write_timeout: 60s
      max_inflight: 10
      buffer_body: false
      ratio: 0.5
    environment_file:
      - env.yml
    secrets:
      - openai-key
    labels:
      com.openfaas.scale.min: 1
    annotations:
      topic: chat
    limits:
      memory: 256Mi
      cpu: 1
    requests:
      memory: 128Mi
      cpu: 100m
    build_args:
      ADDITIONAL_PACKAGE: gcc
configuration:
  templates:
    - name: python3-flask
      source: https://github.com/openfaas/python-flask-template
  copy:
    - ./common
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def stack_with(tmp_path: Path, text: str) -> Path:
    (tmp_path / "fn").mkdir(exist_ok=True)
    return write(tmp_path, "stack.yaml", text)


def error_of(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(StackError) as info:
        load_stack(path, env={} if env is None else env)
    return str(info.value)


def test_full_stack_loads_every_field(tmp_path: Path) -> None:
    (tmp_path / "chat").mkdir()
    write(tmp_path, "env.yml", "environment:\n  from_file: 'yes'\n")
    stack = load_stack(write(tmp_path, "stack.yaml", FULL), env={"REGISTRY": "ghcr.io/me"})
    assert stack.version == "1.0"
    assert stack.provider.name == "openfaas"
    assert stack.provider.gateway == "http://127.0.0.1:8080"
    chat = stack.functions["chat"]
    assert chat.name == "chat"
    assert chat.lang == "python3-flask"
    assert chat.handler_path == (tmp_path / "chat").resolve()
    assert chat.image == "ghcr.io/me/chat:0.1"
    assert chat.fprocess == "python index.py"
    assert chat.namespace == "openfaas-fn"
    assert chat.environment == {
        "write_timeout": "60s",
        "max_inflight": "10",
        "buffer_body": "false",
        "ratio": "0.5",
    }
    assert chat.resolved_environment() == {"from_file": "yes", **chat.environment}
    assert chat.secrets == ["openai-key"]
    assert chat.labels == {"com.openfaas.scale.min": "1"}
    assert chat.annotations == {"topic": "chat"}
    assert chat.limits is not None and chat.limits.memory == "256Mi" and chat.limits.cpu == "1"
    assert chat.requests is not None and chat.requests.cpu == "100m"
    assert chat.build_args == {"ADDITIONAL_PACKAGE": "gcc"}
    assert stack.configuration is not None
    assert stack.configuration.templates[0].name == "python3-flask"
    assert stack.configuration.copy_paths == ["./common"]


def test_minimal_function_gets_default_image_and_provider(tmp_path: Path) -> None:
    path = stack_with(tmp_path, "functions:\n  echo:\n    lang: python3-http\n    handler: fn\n")
    stack = load_stack(path, env={})
    assert stack.functions["echo"].image == "echo:latest"
    assert stack.provider.name == "openfaas" and stack.provider.gateway is None
    assert stack.functions["echo"].resolved_environment() == {}


def test_skip_build_with_image_needs_no_lang_or_handler(tmp_path: Path) -> None:
    path = stack_with(
        tmp_path, "functions:\n  figlet:\n    image: ghcr.io/x/figlet\n    skip_build: true\n"
    )
    figlet = load_stack(path, env={}).functions["figlet"]
    assert figlet.lang is None and figlet.handler_path is None
    assert figlet.image == "ghcr.io/x/figlet"


def test_env_substitution_expands_set_unset_and_defaults(tmp_path: Path) -> None:
    path = stack_with(
        tmp_path,
        """\
        provider:
          name: streamfaas
          gateway: ${GW}
        functions:
          fn:
            lang: python3-flask
            handler: ./fn
            image: ${USER_NAME}/fn:${TAG:-latest}
            environment:
              empty_default: ${EMPTY:-fallback}
              empty_kept: ${EMPTY-fallback}
              unset: "[${NOPE}]"
              unset_default: ${NOPE-x}
        """,
    )
    env = {"GW": "http://gw:8080", "USER_NAME": "alice", "EMPTY": ""}
    stack = load_stack(path, env=env)
    fn = stack.functions["fn"]
    assert stack.provider.gateway == "http://gw:8080"
    assert fn.image == "alice/fn:latest"
    assert fn.environment == {
        "empty_default": "fallback",
        "empty_kept": "",
        "unset": "[]",
        "unset_default": "x",
    }


def test_env_substitution_defaults_to_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMFAAS_TEST_TAG", "v9")
    path = stack_with(
        tmp_path,
        "functions:\n  fn:\n    lang: x\n    handler: fn\n    image: fn:${STREAMFAAS_TEST_TAG}\n",
    )
    assert load_stack(path).functions["fn"].image == "fn:v9"


def test_environment_files_merge_in_order_then_environment_overrides(tmp_path: Path) -> None:
    write(tmp_path, "a.yml", "environment:\n  A: a1\n  SHARED: from-a\n  OVER: a\n")
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", "b.yml", "environment:\n  B: 2\n  SHARED: from-b\n")
    path = stack_with(
        tmp_path,
        """\
        functions:
          fn:
            lang: x
            handler: fn
            environment_file: [a.yml, conf/b.yml]
            environment:
              OVER: stack
        """,
    )
    fn = load_stack(path, env={}).functions["fn"]
    assert fn.resolved_environment() == {"A": "a1", "SHARED": "from-b", "OVER": "stack", "B": "2"}


def test_null_collections_read_as_empty(tmp_path: Path) -> None:
    path = stack_with(
        tmp_path,
        "functions:\n  fn:\n    lang: x\n    handler: fn\n    environment:\n    secrets:\n",
    )
    fn = load_stack(path, env={}).functions["fn"]
    assert fn.environment == {} and fn.secrets == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: '1.0'\nfunctions:\n  stream:\n    handler: fn\n",
            "stack.yaml:3: functions.stream.lang: field required",
        ),
        (
            "provider:\n  name: openfaas\nfunctions:\n  Bad_Name:\n    lang: x\n    handler: fn\n",
            "stack.yaml:4: functions.Bad_Name: invalid function name 'Bad_Name'",
        ),
        (
            "functions: {}\nfunktions: {}\n",
            "stack.yaml:2: funktions: unknown key (did you mean 'functions'?)",
        ),
        (
            "functions:\n  fn:\n    lang: x\n    handler: fn\n    enviroment:\n      A: b\n",
            "stack.yaml:5: functions.fn.enviroment: unknown key (did you mean 'environment'?)",
        ),
        (
            "functions:\n  fn:\n    lang: x\n    handler: ./missing\n",
            "stack.yaml:4: functions.fn.handler:",
        ),
        ("functions:\n  fn:\n    lang: x\n", "stack.yaml:2: functions.fn.handler: field required"),
        (
            "functions:\n  fn:\n    lang: x\n    handler: fn\n    secrets: openai\n",
            "stack.yaml:5: functions.fn.secrets: input should be a valid list",
        ),
        (
            "functions:\n  fn:\n    lang: x\n    handler: fn\n    environment:\n      A: 1\n      B: [1, 2]\n",
            "stack.yaml:7: functions.fn.environment.B: input should be a valid string",
        ),
        (
            "functions:\n  fn:\n    lang: x\n    handler: fn\n    limits:\n      memory: 1Gi\n      gpu: 1\n",
            "stack.yaml:7: functions.fn.limits.gpu: unknown key",
        ),
        (
            "provider:\n  name: lambda\n",
            "stack.yaml:2: provider.name: input should be 'openfaas' or 'streamfaas'",
        ),
        (
            "provider:\n  gateway: gw:8080\n",
            "stack.yaml:2: provider.gateway: must be an http:// or https:// URL",
        ),
        ("\n\nversion: 2.0\n", "stack.yaml:3: version: unsupported version '2.0'"),
        ("functions:\n  fn:\n", "stack.yaml:2: functions.fn: expected a mapping"),
        (
            "configuration:\n  templates:\n    - source: https://x\n",
            "stack.yaml:3: configuration.templates[0].name: field required",
        ),
        ("functions:\n  fn:\n    lang: x\n   handler: fn\n", "stack.yaml:4: invalid YAML"),
        (
            "functions:\n  a: {lang: x}\n  a: {lang: y}\n",
            "stack.yaml:3: invalid YAML: found duplicate key",
        ),
        ("- just\n- a list\n", "stack.yaml:1: expected a mapping at the top level"),
        ("# only a comment\n", "stack.yaml: file is empty"),
    ],
)
def test_invalid_stack_names_file_key_and_line(tmp_path: Path, text: str, expected: str) -> None:
    path = stack_with(tmp_path, text)
    assert expected in error_of(path)
    assert str(path) in error_of(path)


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = stack_with(tmp_path, "functions:\n  a:\n    handler: fn\n    x: 1\n  b:\n    bogus: 1\n")
    message = error_of(path)
    assert "stack.yaml:4: functions.a.x: unknown key" in message
    assert "stack.yaml:6: functions.b.bogus: unknown key" in message
    path.write_text("functions:\n  a:\n    handler: fn\n  b:\n    lang: x\n")
    message = error_of(path)
    assert "stack.yaml:2: functions.a.lang: field required" in message
    assert "stack.yaml:4: functions.b.handler: field required" in message


def test_missing_environment_file_points_at_its_entry(tmp_path: Path) -> None:
    path = stack_with(
        tmp_path,
        "functions:\n  fn:\n    lang: x\n    handler: fn\n    environment_file:\n      - there.yml\n      - gone.yml\n",
    )
    write(tmp_path, "there.yml", "environment:\n  A: b\n")
    message = error_of(path)
    assert "stack.yaml:7: functions.fn.environment_file[1]:" in message
    assert "gone.yml not found" in message


def test_invalid_environment_file_names_that_file_and_line(tmp_path: Path) -> None:
    path = stack_with(
        tmp_path,
        "functions:\n  fn:\n    lang: x\n    handler: fn\n    environment_file: [bad.yml]\n",
    )
    write(tmp_path, "bad.yml", "# secrets go elsewhere\nenvironment:\n  A: ok\n  B: {nested: no}\n")
    assert "bad.yml:4: environment.B: input should be a valid string" in error_of(path)


def test_missing_file_is_a_stack_error(tmp_path: Path) -> None:
    assert "nope.yaml: file not found" in error_of(tmp_path / "nope.yaml")


def test_select_filters_by_name_and_glob(tmp_path: Path) -> None:
    path = stack_with(
        tmp_path,
        "functions:\n"
        + "".join(
            f"  {name}:\n    lang: x\n    handler: fn\n" for name in ("chat", "chat-v2", "echo")
        ),
    )
    stack = load_stack(path, env={})
    assert list(stack.select(None)) == ["chat", "chat-v2", "echo"]
    assert list(stack.select(["echo"])) == ["echo"]
    assert list(stack.select(["chat*"])) == ["chat", "chat-v2"]
    with pytest.raises(StackError, match="no function matches 'figlet'.*chat, chat-v2, echo"):
        stack.select(["figlet"])


def test_append_function_creates_a_new_stack(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    append_function(path, "hello", "python3-flask", "./hello", "hello:latest")
    (tmp_path / "hello").mkdir()
    stack = load_stack(path, env={})
    assert stack.provider.gateway == "http://127.0.0.1:8080"
    assert stack.functions["hello"].lang == "python3-flask"
    assert stack.functions["hello"].handler_path == (tmp_path / "hello").resolve()


def test_append_function_keeps_comments_and_existing_functions(tmp_path: Path) -> None:
    original = (
        "# my functions\nversion: '1.0'\nprovider:\n  name: openfaas  # keep me\n"
        "functions:\n  old:\n    lang: x\n    handler: ./fn\n    secrets:\n      - key\n"
    )
    path = stack_with(tmp_path, original)
    append_function(path, "new-fn", "python3-http", "./fn", "me/new-fn:latest")
    text = path.read_text()
    assert text.startswith(original)
    assert (
        "  new-fn:\n    lang: python3-http\n    handler: ./fn\n    image: me/new-fn:latest\n"
        in text
    )
    assert list(load_stack(path, env={}).functions) == ["old", "new-fn"]


def test_append_function_refuses_duplicates_and_bad_names(tmp_path: Path) -> None:
    path = stack_with(tmp_path, "functions:\n  old:\n    lang: x\n    handler: fn\n")
    with pytest.raises(
        StackError, match=r"stack.yaml:2: functions.old: a function by this name exists"
    ):
        append_function(path, "old", "x", "fn", "old:latest")
    with pytest.raises(StackError, match="invalid function name 'Nope'"):
        append_function(path, "Nope", "x", "fn", "nope:latest")


VALID_LINES = FULL.splitlines()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=400))
def test_arbitrary_text_raises_only_stack_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_stack(path, env={})
    except StackError:
        pass


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(min_value=0, max_value=len(VALID_LINES)),
    st.text(alphabet=st.sampled_from(" \t-:{}[],&*!|>'\"#%@`?~\nabcxyz019_."), max_size=40),
)
def test_mangled_stack_raises_only_stack_error(tmp_path: Path, at: int, junk: str) -> None:
    (tmp_path / "chat").mkdir(exist_ok=True)
    path = tmp_path / "stack.yaml"
    path.write_text("\n".join([*VALID_LINES[:at], junk, *VALID_LINES[at:]]))
    try:
        load_stack(path, env={})
    except StackError:
        pass


@pytest.mark.parametrize("handler", ["../outside", "/etc", "fn/../../outside", "link"])
def test_a_handler_outside_the_stack_files_folder_is_refused(tmp_path: Path, handler: str) -> None:
    # A cloned stack.yaml must not build, and push, files from elsewhere (~/.ssh, say).
    project = tmp_path / "project"
    (tmp_path / "outside").mkdir()
    project.mkdir()
    (project / "link").symlink_to(tmp_path / "outside")
    path = stack_with(project, f"functions:\n  fn:\n    lang: x\n    handler: {handler}\n")
    assert "handler must be inside the stack file's folder" in error_of(path)


@pytest.mark.parametrize("entry", ["../outside.yml", "/etc/streamfaas-outside.yml"])
def test_an_environment_file_outside_the_stack_files_folder_is_refused(tmp_path: Path, entry: str) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write(tmp_path, "outside.yml", "environment:\n  A: b\n")
    path = stack_with(project, f"functions:\n  fn:\n    lang: x\n    handler: fn\n    environment_file: [{entry}]\n")
    assert "environment file must be inside the stack file's folder" in error_of(path)
