"""Function secrets as Kubernetes Secrets, one key each (its name), in the function's namespace.

Only Secrets labelled ``app.kubernetes.io/managed-by=streamfaas`` are function secrets: they
are the ones listed, updated, deleted and mounted. Any other Secret in the namespace (a service
account's token, the gateway's own key) is none of a function's business, and unknown here.
Values go to the API and nowhere else: never into a log, an error or a listing.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from ...errors import BadRequest, Conflict, SecretNotFound
from ..secrets import MAX_SECRET_BYTES, check_secret_name
from ._api import API_TIMEOUT, KubeClient, api_errors
from ._objects import MANAGED_BY, MANAGED_BY_LABEL

SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"


def is_function_secret(obj: dict[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY and obj.get("type", "Opaque") == "Opaque"


def secret_manifest(name: str, namespace: str, value: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "data": {name: base64.b64encode(value).decode()},
    }


class KubeSecrets:
    """The ``SecretStore`` protocol over Kubernetes Secrets."""

    def __init__(self, client: KubeClient, namespace: Callable[[str], str], users: Callable[[str, str], list[str]]) -> None:
        self._client = client
        self._namespace = namespace  # "" → the functions namespace; NamespaceNotFound if not served
        self._users = users

    async def names(self, namespace: str = "") -> list[str]:
        ns = self._namespace(namespace)
        with api_errors(f"list secrets in {ns!r}"):
            data = await self._client.raw_json(self._client.core.list_namespaced_secret(
                ns, label_selector=SELECTOR, _preload_content=False, _request_timeout=API_TIMEOUT))
        # Names only: the values in this answer go no further.
        return sorted(str(o["metadata"]["name"]) for o in data.get("items") or [] if is_function_secret(o))

    async def _read(self, name: str, ns: str) -> dict[str, Any] | None:
        check_secret_name(name)
        try:
            with api_errors(f"read secret {name!r}", missing=lambda: SecretNotFound(name)):
                obj = await self._client.raw_json(self._client.core.read_namespaced_secret(
                    name, ns, _preload_content=False, _request_timeout=API_TIMEOUT))
        except SecretNotFound:
            return None
        return obj if is_function_secret(obj) else None

    async def exists(self, name: str, namespace: str = "") -> bool:
        return await self._read(name, self._namespace(namespace)) is not None

    async def missing(self, names: list[str], namespace: str = "") -> list[str]:
        """Those of ``names`` that are not function secrets in the namespace."""
        ns = self._namespace(namespace)
        return [n for n in names if await self._read(n, ns) is None]

    def _check_value(self, value: bytes) -> None:
        if len(value) > MAX_SECRET_BYTES:
            raise BadRequest(f"secret value is too large: at most {MAX_SECRET_BYTES} bytes")

    async def create(self, name: str, value: bytes, namespace: str = "") -> None:
        ns = self._namespace(namespace)
        check_secret_name(name)
        self._check_value(value)
        try:
            with api_errors(f"create secret {name!r}"):
                await self._client.core.create_namespaced_secret(ns, secret_manifest(name, ns, value), _request_timeout=API_TIMEOUT)
        except Conflict:
            raise Conflict(f"secret {name!r} already exists; update it instead") from None

    async def update(self, name: str, value: bytes, namespace: str = "") -> None:
        ns = self._namespace(namespace)
        self._check_value(value)
        if await self._read(name, ns) is None:
            raise SecretNotFound(f"secret {name!r} not found")
        # The kubelet refreshes mounted copies by itself (within about a minute).
        patch = {"data": {name: base64.b64encode(value).decode()}}
        with api_errors(f"update secret {name!r}", missing=lambda: SecretNotFound(f"secret {name!r} not found")):
            await self._client.core.patch_namespaced_secret(name, ns, patch, _request_timeout=API_TIMEOUT)

    async def delete(self, name: str, namespace: str = "") -> None:
        ns = self._namespace(namespace)
        if await self._read(name, ns) is None:
            raise SecretNotFound(f"secret {name!r} not found")
        users = sorted(self._users(name, ns))
        if users:
            raise Conflict(f"secret {name!r} is used by {', '.join(users)}; remove it from those functions first")
        with api_errors(f"delete secret {name!r}", missing=lambda: SecretNotFound(f"secret {name!r} not found")):
            await self._client.core.delete_namespaced_secret(name, ns, _request_timeout=API_TIMEOUT)

    async def users(self, name: str, namespace: str = "") -> list[str]:
        return sorted(self._users(name, self._namespace(namespace)))
