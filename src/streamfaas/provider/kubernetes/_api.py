"""The connection to the Kubernetes API (``kubernetes_asyncio``), and its errors as ours.

Objects travel as JSON-shaped dicts both ways: what a watch gives, and what a create takes.
An API error becomes a ``StreamfaasError`` with the API's own one-line message; the client's
exception text (which holds headers and the whole response) never reaches a user or a log.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.config.incluster_config import SERVICE_TOKEN_FILENAME

from ...errors import (
    BadRequest,
    ConfigError,
    Conflict,
    FunctionNotFound,
    StreamfaasError,
    UpstreamError,
)

API_TIMEOUT = 30.0  # seconds for one API call (watches and log streams have their own)


class KubeApiError(UpstreamError):
    """The Kubernetes API failed or refused a call for a reason the user cannot fix (502)."""


class Forbidden(StreamfaasError):
    """The gateway's Kubernetes credentials may not do what was asked."""

    http_status = 502


def api_message(exc: ApiException) -> str:
    """The API's own message (its Status object's), never the raw response."""
    try:
        body = json.loads(exc.body or b"{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason or f"HTTP {exc.status}")


def raise_api_error(exc: BaseException, what: str, *, missing: Callable[[], StreamfaasError] | None = None) -> NoReturn:
    """Raise ``exc`` (from a call that did ``what``) as a StreamfaasError."""
    if isinstance(exc, ApiException):
        message = api_message(exc)
        if exc.status == 404 and missing is not None:
            raise missing() from None
        if exc.status == 409:
            raise Conflict(f"{what}: {message}") from None
        if exc.status in (400, 422):
            raise BadRequest(f"{what}: Kubernetes refused it: {message}") from None
        if exc.status in (401, 403):
            raise Forbidden(f"{what}: the gateway's Kubernetes credentials are not allowed to: {message}") from None
        raise KubeApiError(f"{what}: Kubernetes API error {exc.status}: {message}") from None
    if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
        raise KubeApiError(f"{what}: the Kubernetes API did not answer ({type(exc).__name__}: {exc})") from None
    raise exc


@contextlib.contextmanager
def api_errors(what: str, *, missing: Callable[[], StreamfaasError] | None = None) -> Iterator[None]:
    try:
        yield
    except StreamfaasError:
        raise
    except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise_api_error(exc, what, missing=missing)


def not_found(name: str) -> Callable[[], StreamfaasError]:
    return lambda: FunctionNotFound(name)


class KubeClient:
    """The typed APIs over one ``ApiClient`` (one connection pool to the API server)."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self.api = api
        self.core = k8s.CoreV1Api(api)
        self.apps = k8s.AppsV1Api(api)
        self.host = str(api.configuration.host)
        self.version = ""  # the server's, once connected

    @classmethod
    async def connect(cls, kubeconfig: Path | None) -> KubeClient:
        """A client for the cluster of ``kubeconfig``; None: the pod's service account when in
        a pod, else the default kubeconfig (~/.kube/config)."""
        cfg = k8s.Configuration()
        if kubeconfig is not None and not kubeconfig.is_file():
            raise ConfigError(f"--kubeconfig: {kubeconfig} not found")
        try:
            if kubeconfig is None and Path(SERVICE_TOKEN_FILENAME).exists():
                k8s_config.load_incluster_config(client_configuration=cfg)
            else:
                path = str(kubeconfig) if kubeconfig is not None else None
                await k8s_config.load_kube_config(config_file=path, client_configuration=cfg, persist_config=False)
        except (ConfigException, OSError, ValueError) as exc:
            where = kubeconfig or "the default kubeconfig (~/.kube/config)"
            raise ConfigError(f"--kubeconfig: cannot use {where}: {exc}") from None
        self = cls(k8s.ApiClient(cfg))
        try:
            version = await k8s.VersionApi(self.api).get_code(_request_timeout=API_TIMEOUT)
        except ApiException as exc:
            await self.close()
            raise ConfigError(f"the Kubernetes API at {self.host} refused the gateway: {api_message(exc)}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            await self.close()
            raise ConfigError(f"cannot reach the Kubernetes API at {self.host}: {type(exc).__name__}: {exc}") from None
        self.version = str(version.git_version)
        return self

    async def close(self) -> None:
        await self.api.close()

    def to_json(self, model: Any) -> dict[str, Any]:
        """A client model as the API's JSON (camelCase keys), as a watch would give it."""
        data = self.api.sanitize_for_serialization(model)
        return data if isinstance(data, dict) else {}

    async def raw(self, call: Awaitable[Any]) -> aiohttp.ClientResponse:
        """The unparsed response of a call made with ``_preload_content=False``; an error
        status is raised as the client would (ApiException)."""
        resp: aiohttp.ClientResponse = await call
        if not 200 <= resp.status <= 299:
            body = await resp.read()
            resp.release()
            exc = ApiException(status=resp.status, reason=resp.reason)
            exc.body = body
            raise exc
        return resp

    async def raw_json(self, call: Awaitable[Any]) -> dict[str, Any]:
        resp = await self.raw(call)
        try:
            data = json.loads(await resp.read())
        finally:
            resp.release()
        return data if isinstance(data, dict) else {}
