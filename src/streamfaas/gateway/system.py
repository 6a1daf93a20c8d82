"""The ``/system/*`` REST API, with OpenFaaS's routes, JSON field names and status codes."""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import platform
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML

from .. import __version__
from .._build import build_sha
from ..autoscale import Autoscaler
from ..config import parse_duration
from ..errors import BadRequest, ConfigError, StreamfaasError
from ..provider.base import Provider
from ..provider.logs import LogLine
from ..provider.models import (
    DeleteFunctionRequest,
    FunctionDeployment,
    ScaleServiceRequest,
    Secret,
    SecretName,
    go_time,
)
from ..proxy import prepare_unsized, read_capped
from .state import state_of
from .stream_history import stream_history_endpoint

M = TypeVar("M", bound=BaseModel)
AUTOSCALER_KEY = web.AppKey("autoscaler", Autoscaler)


def _json_error(exc: StreamfaasError) -> web.Response:
    return web.Response(status=exc.http_status, text=str(exc).rstrip("\n") + "\n")


@web.middleware
def system_errors(request: web.Request, handler: Any) -> Awaitable[web.StreamResponse]:
    """Map streamfaas errors to statuses with a one-line message, in one place."""
    if request.path.startswith("/function/"):
        # invoke_function maps its own errors. Returned, not awaited, so that a stream holds no
        # frame of this middleware for its whole life.
        return handler(request)  # type: ignore[no-any-return]
    return _mapped_errors(request, handler)


async def _mapped_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        resp: web.StreamResponse = await handler(request)
        return resp
    except StreamfaasError as exc:
        return _json_error(exc)


# A deployment, a secret or a scale request: far below this. The admin's password is checked
# before any body is read; this bounds what one request can make the gateway hold.
MAX_SYSTEM_BODY = 16 * 1024 * 1024


async def json_body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """A ``/system`` request's JSON object (``{}`` for an empty body unless ``required``);
    anything else is a 400 with a one-line message."""
    raw = await read_capped(request, MAX_SYSTEM_BODY, f"request body is larger than the /system limit of {MAX_SYSTEM_BODY >> 20} MiB")
    if not raw.strip():
        if required:
            raise BadRequest("request body is empty: send JSON")
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    except RecursionError:
        # The decoder recurses once per level: [[[[…]]]] a hundred thousand deep exhausts the stack.
        raise BadRequest("invalid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("invalid JSON: expected an object")
    return data


async def _body(request: web.Request, model: type[M]) -> M:
    data = await json_body(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"invalid {model.__name__}: {where}: {first['msg']}") from None


def namespaces_text(provider: Provider) -> str:
    """Which namespaces there are, for an error about one that is not."""
    known = provider.namespaces()
    if len(known) == 1:
        return f"the only namespace is {known[0]!r}"
    return "the namespaces are " + ", ".join(repr(n) for n in known)


def _namespace(request: web.Request, value: str | None) -> str:
    """A request's namespace ("" for the provider's default), if the provider serves it."""
    provider = state_of(request).provider
    if value and value not in provider.namespaces():
        raise BadRequest(f"namespace {value!r} not found; {namespaces_text(provider)}")
    return value or ""


async def list_functions(request: web.Request) -> web.Response:
    namespace = _namespace(request, request.query.get("namespace"))
    items = [s.to_json() for s in state_of(request).provider.statuses(namespace)]
    return web.json_response(items)


async def deploy_function(request: web.Request) -> web.Response:
    deployment = await _body(request, FunctionDeployment)
    namespace = _namespace(request, deployment.namespace)
    deployment.scaling()  # a bad com.openfaas.scale.* label is a 400 that names it
    provider = state_of(request).provider
    if request.method == "PUT":
        provider.record(deployment.service, namespace)  # FunctionNotFound, or why the namespace cannot be read
    await provider.deploy(deployment)
    return web.Response(status=202)


async def delete_function(request: web.Request) -> web.Response:
    body = await _body(request, DeleteFunctionRequest)
    namespace = _namespace(request, body.namespace)
    await state_of(request).provider.remove(body.functionName, namespace)
    return web.Response(status=202)


async def get_function(request: web.Request) -> web.Response:
    namespace = _namespace(request, request.query.get("namespace"))
    status = state_of(request).provider.status(request.match_info["name"], namespace)
    return web.json_response(status.to_json())


async def function_scaling(request: web.Request) -> web.Response:
    """What the autoscaler sees of a function (streamfaas's own route, for ``describe``): its
    scaling settings, its load now and over the stable window, and the replicas it wants."""
    namespace = _namespace(request, request.query.get("namespace"))
    name = request.match_info["name"]
    provider = state_of(request).provider
    status = provider.status(name, namespace)  # 404 for an unknown function
    autoscaler = request.app[AUTOSCALER_KEY]
    load = provider.load(name, namespace)  # this gateway's counts now, fresher than the last look
    live = {"inflight": load.inflight, "waiting": load.waiting, "replicas": load.replicas,
            "availableReplicas": load.ready, "draining": load.draining}
    view = autoscaler.view(name, namespace)
    if view is None:  # not looked at yet (or autoscaling is off): the settings and the load now
        scaling = autoscaler.scaling_of(status.labels)
        view = {
            "autoscaling": autoscaler.config.enabled and not scaling.fixed,
            "type": scaling.type, "target": scaling.target, "targetProportion": scaling.proportion,
            "min": scaling.min, "max": scaling.max, "zero": scaling.zero, "zeroDuration": scaling.zero_duration,
            "load": float(load.concurrency) if scaling.type == "capacity" else None, "stableLoad": None,
            "desiredReplicas": load.replicas, "panic": False,
        }
    view.update(live)
    return web.json_response({"name": name, "namespace": status.namespace, **view})


async def scale_function(request: web.Request) -> web.Response:
    body = await _body(request, ScaleServiceRequest)
    namespace = _namespace(request, body.namespace)
    name = request.match_info["name"]
    if body.serviceName and body.serviceName != name:
        raise BadRequest(f"serviceName {body.serviceName!r} does not match the path's {name!r}")
    await state_of(request).provider.scale(name, body.replicas, namespace)
    return web.Response(status=202)


async def system_info(request: web.Request) -> web.Response:
    # The gateway and its providers are one package, so one build and one sha
    # (commit_message is omitempty in faas-provider's VersionInfo, and we have none).
    version = {"release": __version__, "sha": await asyncio.to_thread(build_sha)}
    kind = state_of(request).provider.name
    return web.json_response(
        {
            "provider": {"provider": f"streamfaas-{kind}", "orchestration": kind, "version": version},
            "version": version,
            "arch": platform.machine(),
        }
    )


async def list_namespaces(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).provider.namespaces())


def _parse_since(raw: str | None) -> float | None:
    """An RFC 3339 time (what faas-cli and the Go SDK send), or a duration back from now."""
    if not raw:
        return None
    try:
        # The CLI's Timestamp type parses the same way: a time it lets through is taken here.
        t = dt.datetime.fromisoformat(raw)
    except ValueError:
        pass
    else:
        return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()
    try:
        return time.time() - parse_duration(raw, name="since")
    except ConfigError:
        raise BadRequest(
            f"since: expected an RFC 3339 time (2024-05-01T12:00:00Z) or a duration (10m), got {raw!r}"
        ) from None


# What Go's strconv.ParseBool takes: faas-cli sends true/false, the Go SDK 1/0.
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def _parse_follow(raw: str | None) -> bool:
    if raw is None or raw in _FALSE:
        return False
    if raw in _TRUE:
        return True
    raise BadRequest(f"follow: expected true or false, got {raw!r}")


MAX_TAIL = 2**31 - 1


async def function_logs(request: web.Request) -> web.StreamResponse:
    """Newline-delimited JSON log messages (faas-provider's ``logs.Message``), streamed as the
    lines are written. ``tail`` keeps the last N lines (all when negative or absent)."""
    q = request.query
    name = q.get("name", "")
    if not name:
        raise BadRequest("name: the function whose logs to read is required")
    namespace = _namespace(request, q.get("namespace"))
    try:
        tail = int(q.get("tail", "-1"))
    except ValueError:
        raise BadRequest(f"tail: expected an integer, got {q.get('tail')!r}") from None
    if tail > MAX_TAIL:
        tail = -1  # more lines than any log holds: all of them (and no overflow further down)
    follow = _parse_follow(q.get("follow"))
    since = _parse_since(q.get("since"))
    instance = q.get("instance", "")
    provider = state_of(request).provider
    provider.record(name, namespace)  # 404 before the 200 goes out
    lines = provider.logs(name, tail=tail, since=since, follow=follow, namespace=namespace)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await prepare_unsized(resp, request)
    namespace = namespace or provider.default_namespace
    async for line in lines:
        if instance and line.instance != instance:
            continue
        await resp.write(json.dumps(_log_message(name, namespace, line)).encode() + b"\n")
    await resp.write_eof()
    return resp


def _log_message(name: str, namespace: str, line: LogLine) -> dict[str, str]:
    timestamp = go_time(dt.datetime.fromtimestamp(line.time, dt.UTC))
    return {"name": name, "namespace": namespace, "instance": line.instance, "timestamp": timestamp, "text": line.text}


def _secret_value(body: Secret) -> bytes:
    # faas-cli's --from-file sends the file both as rawValue (base64: the bytes exactly) and
    # as value (the bytes forced into a JSON string, which mangles what is not UTF-8).
    if body.rawValue:
        try:
            return base64.b64decode(body.rawValue, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("rawValue: expected base64") from None
    if body.value is None:
        raise BadRequest("value or rawValue is required")
    return body.value.encode()


async def list_secrets(request: web.Request) -> web.Response:
    namespace = _namespace(request, request.query.get("namespace"))
    provider = state_of(request).provider
    names = await provider.secrets.names(namespace)
    shown = namespace or provider.default_namespace
    return web.json_response([{"name": n, "namespace": shown} for n in names])


async def create_secret(request: web.Request) -> web.Response:
    body = await _body(request, Secret)
    namespace = _namespace(request, body.namespace)
    await state_of(request).provider.secrets.create(body.name, _secret_value(body), namespace)
    return web.Response(status=201)


async def update_secret(request: web.Request) -> web.Response:
    body = await _body(request, Secret)
    namespace = _namespace(request, body.namespace)
    await state_of(request).provider.secrets.update(body.name, _secret_value(body), namespace)
    return web.Response(status=200)


async def delete_secret(request: web.Request) -> web.Response:
    body = await _body(request, SecretName)
    namespace = _namespace(request, body.namespace)
    await state_of(request).provider.secrets.delete(body.name, namespace)
    return web.Response(status=200)  # faas-cli takes only 200 or 202 as success


async def function_token(request: web.Request) -> web.Response:
    """A private function's bearer token (streamfaas's own route; admin only, like all /system)."""
    name = request.match_info["name"]
    namespace = _namespace(request, request.query.get("namespace"))
    return web.json_response({"name": name, "token": state_of(request).provider.function_token(name, namespace)})


_OPENAPI = Path(__file__).with_name("openapi.yaml")


async def openapi_document(request: web.Request) -> web.Response:
    """The API description, public like OpenFaaS's swagger file."""
    doc = request.app.get(_OPENAPI_KEY)
    if doc is None:
        doc = YAML(typ="safe").load(_OPENAPI.read_text())
        request.app[_OPENAPI_KEY] = doc
    return web.json_response(doc)


_OPENAPI_KEY = web.AppKey("openapi", dict)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/openapi.json", openapi_document)
    r.add_get("/system/functions", list_functions)
    r.add_post("/system/functions", deploy_function)
    r.add_put("/system/functions", deploy_function)
    r.add_delete("/system/functions", delete_function)
    r.add_get("/system/function/{name}", get_function)
    r.add_get("/system/function/{name}/scaling", function_scaling)
    r.add_post("/system/scale-function/{name}", scale_function)
    r.add_get("/system/info", system_info)
    r.add_get("/system/namespaces", list_namespaces)
    r.add_get("/system/logs", function_logs)
    r.add_get("/system/secrets", list_secrets)
    r.add_post("/system/secrets", create_secret)
    r.add_put("/system/secrets", update_secret)
    r.add_delete("/system/secrets", delete_secret)
    r.add_get("/system/function-token/{name}", function_token)
    r.add_get("/system/stream-history", stream_history_endpoint)
