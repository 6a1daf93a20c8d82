"""stack.yaml in OpenFaaS's schema, parsed so that every error names the file, the key and the line.

ruamel.yaml's round-trip loader keeps each key's line; pydantic checks the shape. A pydantic
error's ``loc`` is walked back through the loaded YAML to find the line it points at.
"""

from __future__ import annotations

import difflib
import fnmatch
import io
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from streamfaas._files import replace_file
from streamfaas.config import watchdog_setting_errors
from streamfaas.errors import StackError

__all__ = ["FunctionSpec", "Provider", "Stack", "append_function", "load_stack"]

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# ${VAR}, ${VAR:-default} (unset or empty) and ${VAR-default} (unset only), as faas-cli expands them.
_SUBST_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_NOT_A_PATH = "a path holds no control characters (a NUL, a newline …)"


def _expand(text: str, env: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name, op, default = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        if (op == ":-" and not value) or (op == "-" and value is None):
            return default
        return value or ""

    return _SUBST_RE.sub(one, text)


def _text(value: Any, info: ValidationInfo) -> Any:
    """Turn a YAML scalar into the string faas-cli would see, then expand ``${VAR}``."""
    if isinstance(value, bool | ScalarBoolean):  # ScalarBoolean is an int, not a bool
        value = "true" if value else "false"
    elif isinstance(value, int | float | date):
        value = str(value)
    if not isinstance(value, str):
        return value  # pydantic reports the wrong type
    env = (info.context or {}).get("env")
    return _expand(str(value), env) if env is not None else str(value)


def _empty_if_none(empty: type[dict[Any, Any]] | type[list[Any]]) -> BeforeValidator:
    # `environment:` with every entry commented out loads as null; faas-cli reads it as empty.
    return BeforeValidator(lambda value: empty() if value is None else value)


def _check_name(name: str) -> str:
    if len(name) > 63 or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid function name {name!r}: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters"
        )
    return name


def _check_gateway(url: str | None) -> str | None:
    if url and not url.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, got {url!r}")
    return url


def _check_version(version: str) -> str:
    if version != "1.0":
        raise ValueError(f"unsupported version {version!r}: stack.yaml version must be '1.0'")
    return version


Text = Annotated[str, BeforeValidator(_text)]
TextMap = Annotated[dict[str, Text], _empty_if_none(dict)]
TextList = Annotated[list[Text], _empty_if_none(list)]
_M = TypeVar("_M", bound=BaseModel)
_NOT_A_MAPPING = "expected a mapping at the top level (version, provider, functions)"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Provider(_Strict):
    name: Literal["openfaas", "streamfaas"] = "openfaas"
    gateway: Annotated[Text | None, AfterValidator(_check_gateway)] = None


class Resources(_Strict):
    memory: Text | None = None
    cpu: Text | None = None


class TemplateSource(_Strict):
    name: Text
    source: Text | None = None


class Configuration(_Strict):
    templates: Annotated[list[TemplateSource], _empty_if_none(list)] = []
    copy_paths: TextList = Field(default=[], alias="copy")


class FunctionSpec(_Strict):
    """One entry under ``functions:``. ``image`` is ``NAME:latest`` when the file leaves it out."""

    lang: Text | None = None
    handler: Text | None = None
    image: Text = ""
    fprocess: Text | None = None
    namespace: Text | None = None
    skip_build: bool = False
    environment: TextMap = {}
    environment_file: TextList = []
    secrets: TextList = []
    labels: TextMap = {}
    annotations: TextMap = {}
    limits: Resources | None = None
    requests: Resources | None = None
    build_args: TextMap = {}
    # faas-cli accepts these too; keeping them lets existing stack files load unchanged.
    constraints: TextList = []
    build_options: TextList = []
    readonly_root_filesystem: bool = False

    _name: str = PrivateAttr(default="")
    _handler_path: Path | None = PrivateAttr(default=None)
    _file_environment: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def name(self) -> str:
        return self._name

    @property
    def handler_path(self) -> Path | None:
        """The handler as an absolute path; None only for a `skip_build` function without one."""
        return self._handler_path

    def resolved_environment(self) -> dict[str, str]:
        """``environment_file`` entries merged in order, then ``environment`` on top."""
        return {**self._file_environment, **self.environment}


class _StackFile(_Strict):
    version: Annotated[Text, AfterValidator(_check_version)] = "1.0"
    provider: Provider = Field(default_factory=Provider)
    functions: Annotated[
        dict[Annotated[str, AfterValidator(_check_name)], FunctionSpec], _empty_if_none(dict)
    ] = {}
    configuration: Configuration | None = None


class _EnvFile(_Strict):
    environment: TextMap = {}


_KNOWN_KEYS = sorted(
    {
        field.alias or name
        for model in (_StackFile, Provider, Resources, TemplateSource, Configuration, FunctionSpec)
        for name, field in model.model_fields.items()
    }
)


@dataclass(frozen=True)
class Stack:
    path: Path
    version: str
    provider: Provider
    functions: dict[str, FunctionSpec]
    configuration: Configuration | None = None

    def select(self, names: list[str] | None = None) -> dict[str, FunctionSpec]:
        """The functions matching ``names`` (exact names or globs, like faas-cli's --filter)."""
        if not names:
            return dict(self.functions)
        chosen: set[str] = set()
        for pattern in names:
            matched = [name for name in self.functions if fnmatch.fnmatchcase(name, pattern)]
            if not matched:
                known = ", ".join(self.functions) or "none"
                raise StackError(
                    f"{self.path}: no function matches {pattern!r} (functions: {known})"
                )
            chosen.update(matched)
        return {name: spec for name, spec in self.functions.items() if name in chosen}


def _yaml() -> YAML:
    yaml = YAML()  # round-trip: keeps comments, order and line numbers
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise StackError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise StackError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise StackError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise StackError(f"{path}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except RecursionError:
        raise StackError(f"{path}: invalid YAML: nested too deeply") from None
    except Exception as exc:  # ruamel raises assorted types on hostile text; users get a StackError
        raise StackError(f"{path}: invalid YAML: {exc}") from None


def _line(root: Any, loc: Sequence[Any]) -> int:
    """The line of the deepest key in ``loc`` that exists in the loaded YAML (1-based)."""
    line = root.lc.line + 1 if isinstance(root, CommentedMap | CommentedSeq) else 1
    node = root
    for key in loc:
        if not isinstance(node, CommentedMap | CommentedSeq):
            break
        position = node.lc.data.get(key)
        if position is None:
            break
        line = position[0] + 1
        node = node[key]
    return line


def _dotted(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _issue(path: Path, root: Any, loc: Sequence[Any], message: str) -> str:
    return f"{path}:{_line(root, loc)}: {_dotted(loc)}: {message}"


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(error["loc"][-1]), _KNOWN_KEYS, n=1)
        return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "expected a mapping"
    if kind == "value_error" and "ctx" in error:
        return str(error["ctx"]["error"])
    return error["msg"][:1].lower() + error["msg"][1:]


def _validate(model: type[_M], path: Path, root: Any, env: Mapping[str, str] | None) -> _M:
    try:
        return model.model_validate(root, context={"env": env})
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            keys = [part for part in err["loc"] if part != "[key]"]  # a bad dict key, not a value
            issues.append((_line(root, keys), f"{_dotted(keys)}: {_message(err)}"))
        issues.sort()
        raise StackError("\n".join(f"{path}:{line}: {text}" for line, text in issues)) from None


def _load_env_file(file: Path) -> tuple[dict[str, str], Any]:
    """An environment file's variables, and its loaded YAML (for the lines of its keys)."""
    data = _read_yaml(file)
    if data is None:
        return {}, None
    if not isinstance(data, CommentedMap):
        raise StackError(f"{file}:1: expected a mapping with an `environment:` key")
    # faas-cli does not expand ${VAR} in environment files, so neither do we.
    return _validate(_EnvFile, file, data, None).environment, data


def _finish_function(path: Path, root: Any, name: str, spec: FunctionSpec) -> list[str]:
    """Checks that need the file system or several fields; fills in the derived values."""
    issues: list[str] = []

    def problem(message: str, *key: str | int) -> None:
        issues.append(_issue(path, root, ("functions", name, *key), message))

    spec._name = name
    if spec.lang is None and not (spec.skip_build and spec.image):
        problem("field required (only `image` with `skip_build: true` may go without)", "lang")
    if not spec.image:
        spec.image = f"{name}:latest"
    project = path.parent.resolve()
    if spec.handler is not None and _CONTROL_RE.search(spec.handler):
        problem(_NOT_A_PATH, "handler")
    elif spec.handler is not None:
        spec._handler_path = (path.parent / spec.handler).resolve()
        if not spec._handler_path.is_relative_to(project):
            # A cloned stack.yaml must not build (and push) files from elsewhere: ~/.ssh, say.
            problem(f"the handler must be inside the stack file's folder {project}, not {spec._handler_path}", "handler")
        elif not spec._handler_path.exists():
            problem(f"{spec._handler_path} does not exist", "handler")
    elif not spec.skip_build:
        problem("field required", "handler")
    where: dict[str, tuple[Path, Any]] = {}  # the file (and its YAML) that set each variable last
    for index, entry in enumerate(spec.environment_file):
        if _CONTROL_RE.search(entry):
            problem(_NOT_A_PATH, "environment_file", index)
            continue
        file = path.parent / entry
        if not file.resolve().is_relative_to(project):
            problem(f"an environment file must be inside the stack file's folder {project}", "environment_file", index)
            continue
        if not file.is_file():
            problem(f"{file} not found", "environment_file", index)
            continue
        try:
            variables, data = _load_env_file(file)
        except StackError as exc:
            issues.append(str(exc))
            continue
        spec._file_environment.update(variables)
        where.update(dict.fromkeys(variables, (file, data)))
    # Watchdog settings (exec_timeout, max_inflight …) are checked now, by the watchdog's own
    # parser, rather than by a replica that would crash-loop on them after the deploy.
    for key, why in watchdog_setting_errors(spec.resolved_environment()):
        if key in spec.environment:
            problem(why, "environment", key)
        else:
            file, data = where[key]
            issues.append(_issue(file, data, ("environment", key), why))
    return issues


def load_stack(path: str | Path, env: Mapping[str, str] | None = None) -> Stack:
    """Read and check a stack.yaml; ``${VAR}`` in values expands from ``env`` (default: os.environ)."""
    path = Path(path)
    root = _read_yaml(path)
    if root is None:
        raise StackError(f"{path}: file is empty; it needs at least a `functions:` mapping")
    if not isinstance(root, CommentedMap):
        raise StackError(f"{path}:1: {_NOT_A_MAPPING}")
    stack = _validate(_StackFile, path, root, os.environ if env is None else env)
    issues = [
        issue
        for name, spec in stack.functions.items()
        for issue in _finish_function(path, root, name, spec)
    ]
    if issues:
        raise StackError("\n".join(issues))
    return Stack(path, stack.version, stack.provider, stack.functions, stack.configuration)


def append_function(path: str | Path, name: str, lang: str, handler: str, image: str) -> None:
    """Add a function to a stack.yaml, keeping its comments; create the file if there is none."""
    path = Path(path)
    try:
        _check_name(name)
    except ValueError as exc:
        raise StackError(f"{path}: {exc}") from None
    root = _read_yaml(path) if path.exists() else None
    if root is None:
        root = CommentedMap()
        root["version"] = "1.0"
        root["provider"] = CommentedMap([("name", "openfaas"), ("gateway", DEFAULT_GATEWAY)])
    if not isinstance(root, CommentedMap):
        raise StackError(f"{path}:1: {_NOT_A_MAPPING}")
    functions = root.get("functions")
    if functions is None:
        functions = root["functions"] = CommentedMap()
    if not isinstance(functions, CommentedMap):
        raise StackError(_issue(path, root, ["functions"], "expected a mapping"))
    if name in functions:
        raise StackError(_issue(path, root, ["functions", name], "a function by this name exists"))
    functions[name] = CommentedMap([("lang", lang), ("handler", handler), ("image", image)])
    text = io.StringIO()
    _yaml().dump(root, text)
    replace_file(path, text.getvalue())
