"""Options shared by the commands, and the context object that carries them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from ..config import default_state_dir
from ..errors import ConfigError
from ._client import GatewayClient
from ._credentials import lookup, split_credentials
from ._types import HTTP_URL

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_GATEWAY = "http://127.0.0.1:8080"


class Context:
    """Settings of one CLI run, read once: flags first, then environment, then defaults."""

    def __init__(self) -> None:
        self.gateway_from_flag: str | None = None
        self._gateway_url = DEFAULT_GATEWAY
        self._url_auth: tuple[str, str] | None = None
        env_url = os.environ.get("OPENFAAS_URL")
        self.gateway_url = env_url or DEFAULT_GATEWAY
        if env_url:
            self.gateway_from_flag = env_url
        state = os.environ.get("STREAMFAAS_STATE_DIR")
        self.state_dir = Path(state) if state else default_state_dir()
        self._client: GatewayClient | None = None

    @property
    def gateway_url(self) -> str:
        """The gateway's URL without credentials: what every message may print."""
        return self._gateway_url

    @gateway_url.setter
    def gateway_url(self, url: str) -> None:
        # ``http://user:password@host``: the credentials are used, never printed (errors, the
        # deploy line and prompts all name the gateway by this URL).
        self._gateway_url, self._url_auth = split_credentials(url)

    def client(self) -> GatewayClient:
        if self._client is None:
            auth = self._url_auth or lookup(self.gateway_url, self.state_dir)
            self._client = GatewayClient(self.gateway_url, auth=auth)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


pass_ctx = click.make_pass_decorator(Context, ensure=True)


@contextmanager
def flag_errors() -> Iterator[None]:
    """Settings built from flags that each parsed but do not go together: a bad argument (exit 2)."""
    try:
        yield
    except ConfigError as exc:
        raise click.UsageError(str(exc), click.get_current_context(silent=True)) from None


def _set_gateway(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value:
        obj = ctx.ensure_object(Context)
        obj.gateway_url = value
        obj.gateway_from_flag = value
    return None


def gateway_option(f: F) -> F:
    return click.option(
        "-g", "--gateway", type=HTTP_URL, default=None, expose_value=False, callback=_set_gateway, is_eager=True,
        help=f"Gateway URL (default: $OPENFAAS_URL, stack.yaml's provider.gateway, or {DEFAULT_GATEWAY}).",
    )(f)


def stack_option(f: F) -> F:
    return click.option(
        "-f", "--yaml", "stack_file", default="stack.yaml", show_default=True, help="The stack file.",
    )(f)
