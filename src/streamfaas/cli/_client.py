"""The CLI's client for the gateway's REST API (the CLI never reaches around the gateway)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from ..errors import BadRequest, FunctionNotFound, GatewayUnreachable, StreamfaasError


class APIError(StreamfaasError):
    """The gateway's error: its first line as the message, and the whole text as ``detail``
    (a failed deploy's lines after the first are the function's traceback)."""

    def __init__(self, status: int, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.http_status = status
        self.detail = detail or message


def _with_counts(status: dict[str, Any]) -> dict[str, Any]:
    """A function's status with its counts, which the API leaves out when 0 (omitempty, as
    OpenFaaS's Go types do), filled in the way a Go client reads them."""
    if not isinstance(status, dict):
        raise APIError(502, "the gateway's answer is not a function status: is this an OpenFaaS gateway?")
    return {"replicas": 0, "availableReplicas": 0, "invocationCount": 0, **status}


class GatewayClient:
    def __init__(self, url: str, *, auth: tuple[str, str] | None = None, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, auth=auth, timeout=httpx.Timeout(timeout, connect=5.0))

    def close(self) -> None:
        self._http.close()

    def _unreachable(self, exc: Exception) -> GatewayUnreachable:
        return GatewayUnreachable(
            f"cannot reach the gateway at {self.url} ({exc.__class__.__name__}): is it running? "
            "Start it with `streamfaas gateway`, or point --gateway / OPENFAAS_URL at it"
        )

    def request(self, method: str, path: str, *, json_body: Any = None, params: dict[str, str] | None = None) -> httpx.Response:
        try:
            resp = self._http.request(method, path, json=json_body, params=params)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if resp.status_code == 401:
            raise APIError(401, f"unauthorized at {self.url}: log in with `streamfaas login --gateway {self.url} --password-stdin`")
        if resp.status_code >= 400:
            message = resp.text.strip() or resp.reason_phrase
            raise APIError(resp.status_code, message.splitlines()[0] if message else str(resp.status_code), message)
        return resp

    @contextmanager
    def stream(
        self, method: str, path: str, *, content: bytes | None = None, headers: dict[str, str] | None = None,
        params: Any = None,
    ) -> Iterator[httpx.Response]:
        try:
            # auth=None: the admin's credentials never travel to a function.
            with self._http.stream(method, path, content=content, headers=headers, params=params, auth=None) as resp:
                yield resp
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    @contextmanager
    def _stream_admin(self, method: str, path: str, *, params: Any = None) -> Iterator[httpx.Response]:
        try:
            with self._http.stream(method, path, params=params) as resp:
                if resp.status_code == 401:
                    raise APIError(401, f"unauthorized at {self.url}: log in with `streamfaas login --gateway {self.url} --password-stdin`")
                yield resp
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    # ---- the /system API ----
    def list_functions(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.request("GET", "/system/functions").json()
        return [_with_counts(f) for f in data]

    def get_function(self, name: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = self.request("GET", f"/system/function/{name}").json()
        except APIError as exc:
            if exc.http_status == 404:
                raise FunctionNotFound(name) from None
            raise
        return _with_counts(data)

    def deploy(self, deployment: dict[str, Any]) -> None:
        # As faas-cli does: update with PUT, and create with POST when PUT says it is new.
        try:
            self.request("PUT", "/system/functions", json_body=deployment)
        except APIError as exc:
            if exc.http_status != 404:
                raise
            self.request("POST", "/system/functions", json_body=deployment)

    def remove(self, name: str) -> None:
        try:
            self.request("DELETE", "/system/functions", json_body={"functionName": name})
        except APIError as exc:
            if exc.http_status == 404:
                raise FunctionNotFound(name) from None
            raise

    def scale(self, name: str, replicas: int) -> None:
        try:
            self.request("POST", f"/system/scale-function/{name}", json_body={"serviceName": name, "replicas": replicas})
        except APIError as exc:
            if exc.http_status == 404:
                raise FunctionNotFound(name) from None
            raise

    def logs(self, name: str, *, tail: int, follow: bool, since: str | None) -> Iterator[dict[str, Any]]:
        params = {"name": name, "tail": str(tail), "follow": "true" if follow else "false"}
        if since:
            params["since"] = since
        with self._stream_admin("GET", "/system/logs", params=list(params.items())) as resp:
            if resp.status_code >= 400:
                text = resp.read().decode(errors="replace").strip()
                if resp.status_code == 404:
                    raise FunctionNotFound(name)
                raise BadRequest(text or f"logs failed with HTTP {resp.status_code}")
            for line in resp.iter_lines():
                if line.strip():
                    yield json.loads(line)
