"""Create or update a function's Deployment and Service."""

from __future__ import annotations

import contextlib
from typing import Any

from kubernetes_asyncio import client as k8s

from ...errors import Conflict, FunctionNotFound
from ..models import FunctionDeployment
from ._api import API_TIMEOUT, KubeClient, api_errors, not_found
from ._objects import (
    FUNCTION_LABEL,
    REQUEST_ANNOTATION,
    deployment_manifest,
    replicas_wanted,
    service_is_ours,
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
    An update keeps the replicas it had (within a new ``com.openfaas.scale.max``) and rolls.
    Whatever refuses the deploy (a bad quantity or constraint, a Deployment or a Service of that
    name that is not a function's) refuses it before any object is made or changed."""
    name = d.service
    deployment_manifest(d, ns, replicas=1)  # a bad quantity or constraint: a BadRequest, now
    existing = await _read(client, name, ns)
    if existing is not None:
        _check_ours(existing, name, ns)
    else:  # what the API server would refuse (a bad label or annotation), refused by a dry run;
        # one made meanwhile by another gateway (409) is updated below.
        with contextlib.suppress(Conflict), api_errors(f"create function {name!r}"):
            await client.apps.create_namespaced_deployment(ns, deployment_manifest(d, ns, replicas=d.initial_replicas()),
                                                           dry_run="All", _request_timeout=API_TIMEOUT)
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
        if service_made is not None and existing is None:  # refused after all: leave nothing behind,
            # and delete only the Service made here (a Conflict: it is another one now).
            with contextlib.suppress(FunctionNotFound, Conflict), api_errors(f"delete service {name!r}", missing=not_found(name)):
                await client.core.delete_namespaced_service(
                    name, ns, body=k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=service_made)),
                    _request_timeout=API_TIMEOUT)
        raise


async def _read_service(client: KubeClient, name: str, ns: str) -> dict[str, Any] | None:
    try:
        with api_errors(f"read service {name!r}", missing=not_found(name)):
            return await client.raw_json(client.core.read_namespaced_service(
                name, ns, _preload_content=False, _request_timeout=API_TIMEOUT))
    except FunctionNotFound:
        return None


def _foreign_service(name: str, ns: str) -> Conflict:
    return Conflict(f"a Service {name!r} that is not a streamfaas function's exists in namespace {ns!r}; "
                    "choose another name or remove it")


async def _ensure_service(client: KubeClient, d: FunctionDeployment, ns: str) -> str | None:
    """Create the function's Service, or bring the function's existing one up to date; the
    uid of the Service if made here. A Service of that name that is not the function's is
    left as it is, and refuses the deploy (409)."""
    name = d.service
    manifest = service_manifest(d, ns)
    for _ in range(UPDATE_ATTEMPTS):
        try:
            with api_errors(f"create service {name!r}"):
                made = await client.core.create_namespaced_service(ns, manifest, _request_timeout=API_TIMEOUT)
            return str(made.metadata.uid)
        except Conflict:
            pass
        existing = await _read_service(client, name, ns)
        if existing is None:
            continue  # deleted just now: make it
        if not service_is_ours(existing, name):
            raise _foreign_service(name, ns)
        # Patched only as read: a Service that changed since (relabelled, replaced) is read again.
        patch = {"metadata": {"labels": manifest["metadata"]["labels"], "annotations": manifest["metadata"]["annotations"],
                              "resourceVersion": existing["metadata"]["resourceVersion"]},
                 "spec": {"selector": manifest["spec"]["selector"], "ports": manifest["spec"]["ports"]}}
        try:
            with api_errors(f"update service {name!r}", missing=not_found(name)):
                await client.core.patch_namespaced_service(name, ns, patch, _request_timeout=API_TIMEOUT)
            return None
        except (Conflict, FunctionNotFound):
            pass
    raise Conflict(f"the Service {name!r} in namespace {ns!r} kept changing while it was updated; try again")


async def delete_service(client: KubeClient, name: str, ns: str) -> None:
    """Delete function ``name``'s Service if it is the function's; any other Service of that
    name is left alone."""
    for _ in range(UPDATE_ATTEMPTS):
        existing = await _read_service(client, name, ns)
        if existing is None or not service_is_ours(existing, name):
            return
        meta = existing["metadata"]
        # Deleted only as read: the same object, unchanged since it was found to be ours.
        options = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=meta["uid"], resource_version=meta["resourceVersion"]))
        try:
            with api_errors(f"delete service {name!r}", missing=not_found(name)):
                await client.core.delete_namespaced_service(name, ns, body=options, _request_timeout=API_TIMEOUT)
            return
        except FunctionNotFound:
            return
        except Conflict:
            pass
    raise Conflict(f"the Service {name!r} in namespace {ns!r} kept changing while it was deleted; try again")
