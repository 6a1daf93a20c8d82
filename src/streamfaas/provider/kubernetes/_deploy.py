"""Create or update a function's Deployment and Service."""

from __future__ import annotations

from typing import Any

from ...errors import Conflict, FunctionNotFound
from ..models import FunctionDeployment
from ._api import API_TIMEOUT, KubeClient, api_errors, not_found
from ._objects import (
    FUNCTION_LABEL,
    REQUEST_ANNOTATION,
    deployment_manifest,
    replicas_wanted,
    service_manifest,
)

UPDATE_ATTEMPTS = 5  # the controllers write the Deployment's status often: re-read, try again


async def _read(client: KubeClient, name: str, ns: str) -> dict[str, Any] | None:
    try:
        with api_errors(f"read function {name!r}", missing=not_found(name)):
            return await client.raw_json(client.apps.read_namespaced_deployment(
                name, ns, _preload_content=False, _request_timeout=API_TIMEOUT))
    except FunctionNotFound:
        return None


def _check_ours(obj: dict[str, Any], name: str, ns: str) -> None:
    meta = obj.get("metadata") or {}
    if REQUEST_ANNOTATION not in (meta.get("annotations") or {}) or (meta.get("labels") or {}).get(FUNCTION_LABEL) != name:
        raise Conflict(f"a Deployment {name!r} that is not a streamfaas function exists in namespace {ns!r}; "
                       "choose another name or remove it")


async def apply_function(client: KubeClient, d: FunctionDeployment, ns: str) -> tuple[bool, dict[str, Any]]:
    """Make the function's objects as ``d`` says; ``(created, the Deployment as the API has it)``.
    An update keeps the replicas it had (within a new ``com.openfaas.scale.max``) and rolls."""
    name = d.service
    existing = await _read(client, name, ns)
    service_made = await _ensure_service(client, d, ns)
    try:
        if existing is None:
            manifest = deployment_manifest(d, ns, replicas=d.initial_replicas())
            try:
                with api_errors(f"create function {name!r}"):
                    made = await client.apps.create_namespaced_deployment(ns, manifest, _request_timeout=API_TIMEOUT)
                return True, client.to_json(made)
            except Conflict:  # another gateway made it just now: update it instead
                existing = await _read(client, name, ns)
                if existing is None:
                    raise
        for attempt in range(UPDATE_ATTEMPTS):
            _check_ours(existing, name, ns)
            manifest = deployment_manifest(d, ns, replicas=d.scaling().clamp(replicas_wanted(existing)))
            # Replaced only as read: a scale or an update by another gateway in between is
            # not overwritten, it makes this one read again.
            manifest["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            try:
                with api_errors(f"update function {name!r}", missing=not_found(name)):
                    replaced = await client.apps.replace_namespaced_deployment(name, ns, manifest, _request_timeout=API_TIMEOUT)
                return False, client.to_json(replaced)
            except Conflict:
                if attempt == UPDATE_ATTEMPTS - 1:
                    raise
            existing = await _read(client, name, ns)
            if existing is None:
                raise FunctionNotFound(name)
        raise AssertionError("unreachable")
    except BaseException:
        if service_made and existing is None:  # refused (a bad label, a bad quantity): leave nothing behind
            with api_errors(f"delete service {name!r}"):
                await client.core.delete_namespaced_service(name, ns, _request_timeout=API_TIMEOUT)
        raise


async def _ensure_service(client: KubeClient, d: FunctionDeployment, ns: str) -> bool:
    """Create the function's Service, or bring an existing one up to date; True if created."""
    manifest = service_manifest(d, ns)
    try:
        with api_errors(f"create service {d.service!r}"):
            await client.core.create_namespaced_service(ns, manifest, _request_timeout=API_TIMEOUT)
        return True
    except Conflict:
        pass
    patch = {"metadata": {"labels": manifest["metadata"]["labels"], "annotations": manifest["metadata"]["annotations"]},
             "spec": {"selector": manifest["spec"]["selector"], "ports": manifest["spec"]["ports"]}}
    with api_errors(f"update service {d.service!r}"):
        await client.core.patch_namespaced_service(d.service, ns, patch, _request_timeout=API_TIMEOUT)
    return False
