"""A function as Kubernetes objects, shaped as faas-netes shapes them, and back.

Each function is a Deployment and a Service named after it, labelled ``faas_function=NAME``.
The request that made it is kept whole on the Deployment (``REQUEST_ANNOTATION``, JSON), so
any gateway reads every function back from the cluster and keeps no state of its own.
These are plain functions over JSON-shaped dicts: what the API takes and what a watch gives.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import ValidationError

from ...config import WATCHDOG_PLATFORM_ONLY, parse_duration
from ...errors import BadRequest, ConfigError
from ..models import FunctionDeployment

FUNCTION_LABEL = "faas_function"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "streamfaas"
# The FunctionDeployment request as JSON: what a restarted (or another) gateway reads back.
REQUEST_ANNOTATION = "streamfaas/deployment"
NAMESPACE_LABEL = "openfaas"  # namespaces labelled openfaas=1 take functions too, as on OpenFaaS
WATCHDOG_PORT = 8080
SECRETS_MOUNT = "/var/openfaas/secrets"
SECRETS_VOLUME = "streamfaas-secrets"
DEFAULT_DRAIN = 30.0
# SIGTERM starts the watchdog's drain (drain_timeout); the kubelet's SIGKILL comes this much
# after the drain's end, so streams that finish in time are never cut.
GRACE_MARGIN = 5
# After SIGTERM a pod serves on this long (not ready) while every gateway's Endpoints watch
# catches up, then drains; it is part of GRACE_MARGIN.
SHUTDOWN_DELAY = 2.0


def _drain_seconds(env: dict[str, str]) -> float:
    try:
        return parse_duration(env.get("drain_timeout") or DEFAULT_DRAIN, name="drain_timeout")
    except ConfigError:
        return DEFAULT_DRAIN  # the watchdog reports the bad value; the default drain applies


def container_env(d: FunctionDeployment) -> list[dict[str, str]]:
    """The container's environment: the function's, sorted as faas-netes sorts it, and then
    the platform's own settings, which the function's cannot replace."""
    env = {k: v for k, v in d.envVars.items() if k not in WATCHDOG_PLATFORM_ONLY}
    if d.envProcess:
        env["fprocess"] = d.envProcess
    items = [{"name": k, "value": v} for k, v in sorted(env.items())]
    # The watchdog listens on the pod's address (the gateway connects to it there), on 8080.
    items += [
        {"name": "STREAMFAAS_FUNCTION", "value": d.service},
        {"name": "STREAMFAAS_WATCHDOG_HOST", "value": "0.0.0.0"},
        {"name": "port", "value": str(WATCHDOG_PORT)},
        {"name": "STREAMFAAS_SHUTDOWN_DELAY", "value": f"{SHUTDOWN_DELAY:g}s"},
    ]
    return items


# A Kubernetes resource quantity: a decimal number, then an SI or binary suffix or an exponent.
_QUANTITY = re.compile(r"[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([numkMGTPE]|[KMGTPE]i|[eE][+-]?[0-9]+)?")


def resources(d: FunctionDeployment) -> dict[str, dict[str, str]]:
    """``limits`` and ``requests`` as the container's resources; a bad quantity is a BadRequest."""
    out: dict[str, dict[str, str]] = {}
    for key, given in (("limits", d.limits), ("requests", d.requests)):
        if given is None:
            continue
        wanted = {k: v.strip() for k, v in (("memory", given.memory), ("cpu", given.cpu)) if v and v.strip()}
        for kind, value in wanted.items():
            if not _QUANTITY.fullmatch(value):
                raise BadRequest(f"{key}.{kind}: {value!r} is not a Kubernetes quantity (e.g. 128Mi, 1Gi, 500m, 0.5)")
        if wanted:
            out[key] = wanted
    return out


# A label key (an optional DNS-subdomain prefix and "/", then a name) and a label value, as the
# API server checks them: what a nodeSelector takes.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(rf"({_LABEL_NAME})?")


def node_selector(d: FunctionDeployment) -> dict[str, str]:
    """``constraints`` as the pod's nodeSelector, as faas-netes makes it: each is ``key=value``
    (a node label). One that is not is a BadRequest naming it, never dropped: a constraint
    that keeps a function on some nodes must hold or the deploy must fail."""
    selector: dict[str, str] = {}
    for constraint in d.constraints:
        key, sep, value = (part.strip() for part in constraint.partition("="))
        if (not sep or not _LABEL_KEY.fullmatch(key) or len(key.partition("/")[0]) > 253
                or not _LABEL_VALUE.fullmatch(value)):
            raise BadRequest(f"constraints: {constraint!r} is not key=value with a node label's key and value "
                             "(e.g. node.example.com/pool=untrusted)")
        if selector.get(key, value) != value:
            raise BadRequest(f"constraints: {constraint!r} contradicts {key}={selector[key]}")
        selector[key] = value
    return selector


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": WATCHDOG_PORT, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 1,
        "successThreshold": 1,
        "failureThreshold": failures,
    }


def request_json(d: FunctionDeployment) -> str:
    return json.dumps(d.model_dump(mode="json", exclude_defaults=True), sort_keys=True, separators=(",", ":"))


def deployment_manifest(d: FunctionDeployment, namespace: str, *, replicas: int, pull_policy: str = "IfNotPresent") -> dict[str, Any]:
    """The Deployment of a function: one container, the watchdog on 8080."""
    name = d.service
    selector = {FUNCTION_LABEL: name}
    pod_labels = {**d.labels, FUNCTION_LABEL: name}
    container: dict[str, Any] = {
        "name": name,
        "image": d.image,
        "imagePullPolicy": pull_policy,
        "ports": [{"name": "http", "containerPort": WATCHDOG_PORT, "protocol": "TCP"}],
        "env": container_env(d),
        "resources": resources(d),
        # Readiness is what routes requests (through Endpoints): checked every second, so a
        # cold start is served as soon as the function is up.
        "readinessProbe": _probe("/_/ready", period=1, failures=3),
        "livenessProbe": {**_probe("/_/health", period=10, failures=3), "initialDelaySeconds": 5},
        # A function is untrusted code: no Linux capabilities (the watchdog listens on 8080 and
        # needs none) and the runtime's default seccomp filter.
        "securityContext": {
            "readOnlyRootFilesystem": d.readOnlyRootFilesystem,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if d.secrets:
        # One projected volume with this function's secrets and no other: each secret's
        # keys (a streamfaas secret has one, its name) become files under SECRETS_MOUNT.
        sources = [{"secret": {"name": s}} for s in sorted(set(d.secrets))]
        volumes.append({"name": SECRETS_VOLUME, "projected": {"sources": sources}})
        mounts.append({"name": SECRETS_VOLUME, "mountPath": SECRETS_MOUNT, "readOnly": True})
    if d.readOnlyRootFilesystem:
        volumes.append({"name": "tmp", "emptyDir": {}})  # as faas-netes: /tmp stays writable
        mounts.append({"name": "tmp", "mountPath": "/tmp"})
    if mounts:
        container["volumeMounts"] = mounts
    grace = math.ceil(_drain_seconds(d.envVars)) + GRACE_MARGIN
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": grace,
        # A function is untrusted code: no API credential, no other services' addresses.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    selector_of_nodes = node_selector(d)
    if selector_of_nodes:
        pod_spec["nodeSelector"] = selector_of_nodes
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {FUNCTION_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {**d.annotations, REQUEST_ANNOTATION: request_json(d)},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            # A new version serves before the old one stops: never fewer ready replicas.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": dict(d.annotations)},
                "spec": pod_spec,
            },
        },
    }


def service_manifest(d: FunctionDeployment, namespace: str) -> dict[str, Any]:
    """The function's Service. The gateway routes to pod addresses itself (from its Endpoints),
    so this is for others in the cluster and for the Endpoints it makes."""
    name = d.service
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            # The Endpoints controller copies these onto the Endpoints, which are watched by them.
            "labels": {FUNCTION_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": dict(d.annotations),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {FUNCTION_LABEL: name},
            "ports": [{"name": "http", "protocol": "TCP", "port": WATCHDOG_PORT, "targetPort": WATCHDOG_PORT}],
        },
    }


def service_is_ours(obj: dict[str, Any], name: str) -> bool:
    """Whether a Service is the one streamfaas made for function ``name`` (by its labels)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(FUNCTION_LABEL) == name and labels.get(MANAGED_BY_LABEL) == MANAGED_BY


def deployment_request(obj: dict[str, Any]) -> FunctionDeployment | None:
    """The request a Deployment was made from, or None when it is not one of ours (or its
    annotation was edited into something unreadable)."""
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(REQUEST_ANNOTATION)
    if not raw:
        return None
    try:
        d = FunctionDeployment.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        return None
    name = (obj.get("metadata") or {}).get("name")
    return d if d.service == name else None


def replicas_wanted(obj: dict[str, Any]) -> int:
    return int((obj.get("spec") or {}).get("replicas") or 0)


def replicas_available(obj: dict[str, Any]) -> int:
    return int((obj.get("status") or {}).get("availableReplicas") or 0)


def pod_start_error(pod: dict[str, Any]) -> str:
    """Why a pod's function container does not run, from its status; "" while it starts or runs."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return f"Unschedulable: {cond.get('message') or 'no node fits the pod'}"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason") or ""
        if reason in STUCK_REASONS:
            message = waiting.get("message") or ""
            last = ((cs.get("lastState") or {}).get("terminated")) or {}
            if reason == "CrashLoopBackOff" and last:
                message = f"exit code {last.get('exitCode')}" + (f": {last.get('message')}" if last.get("message") else f" ({last.get('reason')})")
            return f"{reason}: {message}" if message else reason
    return ""


# Waiting reasons that do not resolve by waiting a little: report them, do not wait them out.
STUCK_REASONS = frozenset({
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
    "CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
})
