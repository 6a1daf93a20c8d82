"""Click parameter types for the values the CLI parses itself.

A value that does not parse fails in click's parsing, before any command runs, so every command
reports a bad argument the same way: one line naming the option, and exit status 2.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click
from click.shell_completion import CompletionItem

from ..config import parse_duration, parse_size
from ..errors import ConfigError
from ..templates import template_names

if TYPE_CHECKING:
    _ParamType = click.ParamType[Any]  # generic from click 8.5 on; pyproject allows older clicks
else:
    _ParamType = click.ParamType

# config.py's parsers prefix their messages with the setting's name; click names the option itself.
_SUBJECT = "value"


def _reason(exc: ConfigError) -> str:
    return str(exc).removeprefix(f"{_SUBJECT}: ")


class Duration(_ParamType):
    """A Go-style duration (``60s``, ``1m30s``, ``500ms``) or a number of seconds; gives seconds."""

    name = "duration"

    def __init__(self, *, positive: bool = False) -> None:
        self.positive = positive

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = parse_duration(value, name=_SUBJECT)
        except ConfigError as exc:
            self.fail(_reason(exc), param, ctx)
        if self.positive and seconds <= 0:
            self.fail(f"must be more than 0, got {value!r}", param, ctx)
        return seconds


class Size(_ParamType):
    """A byte size (``1048576``, ``512KiB``, ``1MiB``); gives bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_size(value, name=_SUBJECT)
        except ConfigError as exc:
            self.fail(_reason(exc), param, ctx)


class KeyValue(_ParamType):
    """``KEY=VALUE``; gives the pair. The value may be empty and may hold ``=``."""

    name = "key=value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        key, sep, rest = str(value).partition("=")
        if not sep or not key:
            self.fail(f"expected {self.name.upper()}, got {value!r}", param, ctx)
        return key, rest


# RFC 9110's token: what a header name and a method may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class Header(KeyValue):
    """A request header as ``NAME=VALUE``: a name HTTP allows, a value on one line."""

    name = "name=value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str]:
        key, rest = super().convert(value, param, ctx)
        if _TOKEN.fullmatch(key) is None:
            self.fail(f"{key!r} is not a header name", param, ctx)
        if any(c in rest for c in "\r\n\0"):
            self.fail(f"the value of {key!r} must be one line", param, ctx)
        return key, rest


class HttpMethod(_ParamType):
    """An HTTP method (``GET``, ``post`` …); gives it upper-cased."""

    name = "method"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if _TOKEN.fullmatch(str(value)) is None:
            self.fail(f"{value!r} is not an HTTP method", param, ctx)
        return str(value).upper()


class HttpUrl(_ParamType):
    """An ``http://`` or ``https://`` URL with a host."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018  (raises ValueError on a port that is not a number 0-65535)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in {"http", "https"} or not parts.hostname:
            self.fail(f"expected an http:// or https:// URL, got {text!r}", param, ctx)
        return text


class HttpUrlList(_ParamType):
    """One or more ``http(s)://`` URLs, comma-separated; converts to a tuple of them."""

    name = "url[,url…]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        return tuple(HTTP_URL.convert(part.strip(), param, ctx) for part in str(value).split(",") if part.strip())


class Timestamp(_ParamType):
    """An RFC 3339 time (``2024-05-01T12:00:00Z``), passed on as written."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            # The same parse as the gateway's, so a time the CLI lets through is one it accepts.
            dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"expected an RFC 3339 time (e.g. 2024-05-01T12:00:00Z), got {text!r}", param, ctx)
        return text


class Since(Timestamp):
    """An RFC 3339 time, or a duration back from now (``10m``, ``1h30m``) as faas-cli's
    ``logs --since`` takes; gives an RFC 3339 time."""

    name = "time|duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            seconds = parse_duration(text, name=_SUBJECT)
        except ConfigError:
            try:
                return super().convert(text, param, ctx)
            except click.BadParameter:
                self.fail(f"expected an RFC 3339 time (e.g. 2024-05-01T12:00:00Z) or a duration (e.g. 10m), got {text!r}", param, ctx)
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
        return since.isoformat(timespec="seconds").replace("+00:00", "Z")


class TemplateName(_ParamType):
    """The name of a template shipped with streamfaas."""

    name = "template"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        names = template_names()
        if value not in names:
            self.fail(f"unknown template {value!r}; available: {', '.join(names)}", param, ctx)
        return str(value)

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        return [CompletionItem(name) for name in template_names() if name.startswith(incomplete)]


class KubernetesName(_ParamType):
    """A Kubernetes object name that must be a DNS-1123 label (a namespace)."""

    name = "name"
    _LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not isinstance(value, str) or not self._LABEL.fullmatch(value):
            self.fail(f"{value!r} is not a valid name: lowercase letters, digits and '-', at most 63", param, ctx)
        return value


DURATION = Duration()
POSITIVE_DURATION = Duration(positive=True)
SIZE = Size()
KEY_VALUE = KeyValue()
HEADER = Header()
HTTP_METHOD = HttpMethod()
HTTP_URL = HttpUrl()
HTTP_URLS = HttpUrlList()
TIMESTAMP = Timestamp()
SINCE = Since()
TEMPLATE = TemplateName()
K8S_NAME = KubernetesName()
