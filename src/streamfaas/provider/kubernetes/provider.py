"""The kubernetes provider: each function a Deployment and a Service, secrets as Secrets, and
requests proxied straight to ready pod addresses (from a watch of Endpoints).

The cluster is the only state: what functions there are, their settings (the request kept on
each Deployment), replicas and secrets are all read from it, so a restarted gateway, or any
number of gateways side by side, see the same functions. Only invocation counts are each
gateway's own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from ...config import BodyLimits, GatewayConfig, parse_bool, parse_int
from ...errors import (
    BadRequest,
    ConfigError,
    Conflict,
    FunctionNotFound,
    FunctionNotReady,
    NamespaceNotFound,
)
from ...proxy import client_session
from ..base import Endpoint, FunctionLoad, WaitHook
from ..logs import LogLine
from ..models import FunctionDeployment, FunctionStatus, ScaleLabels
from ._activator import Activator
from ._api import API_TIMEOUT, Forbidden, KubeClient, api_errors, not_found
from ._deploy import apply_function, delete_service
from ._endpoints import EndpointTable
from ._logs import PodLogs
from ._namespaces import ServedNamespace, ServedNamespaces
from ._objects import (
    FUNCTION_LABEL,
    NAMESPACE_LABEL,
    REQUEST_ANNOTATION,
    deployment_request,
    pod_start_error,
    replicas_available,
    replicas_wanted,
)
from ._secrets import KubeSecrets
from ._watch import Key, key_of

TOKEN_KEY_SECRET = "streamfaas-function-token-key"


def _buffer_body(env: dict[str, str]) -> bool:
    try:
        return parse_bool(env.get("buffer_body") or "false", name="buffer_body")
    except ConfigError:
        return False  # the watchdog reports the bad value; the gateway streams as by default


def pod_capacity(env: dict[str, str]) -> int | None:
    """Requests one pod serves at once: ``threads`` in ``http`` mode, where the function says
    it (each stream holds a thread); None (no limit here) otherwise. As the local provider
    counts an OCI image's replica: the image's own server is not known to be threaded."""
    if (env.get("mode") or "http").strip().lower() != "http" or "threads" not in env:
        return None
    try:
        return parse_int(env["threads"], name="threads", minimum=1)
    except ConfigError:
        return None  # refused at deploy; only an object edited by hand gets here


class KubeFunction:
    """A function as one gateway sees it: its Deployment, read from the cluster, and the
    requests this gateway sent it. Kept as one object while the Deployment changes, so the
    count the gateway adds to is never lost to an update."""

    def __init__(self, obj: dict[str, Any], deployment: FunctionDeployment) -> None:
        self.invocations = 0
        self.waiting = 0  # requests in acquire waiting for a ready pod (the autoscaler's signal)
        self.changed = asyncio.Event()  # set (and replaced) at each change of it or its pods
        self.refresh(obj, deployment)

    def refresh(self, obj: dict[str, Any], deployment: FunctionDeployment) -> None:
        self.obj = obj
        self.deployment = deployment
        self.buffer_body = _buffer_body(deployment.envVars)
        self.body_limits = BodyLimits.from_env(deployment.envVars)
        # Requests one pod serves at once (``threads`` in http mode), as the local provider
        # counts a replica's: past it, a request waits in the gateway for a free slot.
        self.capacity = pod_capacity(deployment.envVars)
        try:
            self.scaling = deployment.scaling()
        except BadRequest:  # refused at deploy; only an object edited by hand gets here
            self.scaling = ScaleLabels()

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class KubernetesProvider:
    name = "kubernetes"

    def __init__(self, *, kubeconfig: Path | None, namespace: str, cold_start_timeout: float = 60.0) -> None:
        self.kubeconfig = kubeconfig
        self.default_namespace = namespace
        self.cold_start_timeout = cold_start_timeout
        self.on_wait: WaitHook | None = None
        self.functions: dict[Key, KubeFunction] = {}
        self._served: ServedNamespaces | None = None
        self._client: KubeClient | None = None
        self._session: aiohttp.ClientSession | None = None
        self._endpoints: EndpointTable | None = None
        self._activator: Activator | None = None
        self._token_key = b""
        self._secrets: KubeSecrets | None = None

    @classmethod
    def from_config(cls, config: GatewayConfig) -> KubernetesProvider:
        return cls(kubeconfig=config.kubeconfig, namespace=config.namespace, cold_start_timeout=config.cold_start_timeout)

    # ---- lifecycle ------------------------------------------------------------------------
    @property
    def client(self) -> KubeClient:
        if self._client is None:
            raise RuntimeError("the kubernetes provider is not started")
        return self._client

    @property
    def secrets(self) -> KubeSecrets:
        if self._secrets is None:
            raise RuntimeError("the kubernetes provider is not started")
        return self._secrets

    @property
    def served(self) -> ServedNamespaces:
        if self._served is None:
            raise RuntimeError("the kubernetes provider is not started")
        return self._served

    @property
    def endpoints(self) -> EndpointTable:
        if self._endpoints is None:
            raise RuntimeError("the kubernetes provider is not started")
        return self._endpoints

    @property
    def activator(self) -> Activator:
        if self._activator is None:
            raise RuntimeError("the kubernetes provider is not started")
        return self._activator

    async def start(self) -> None:
        self._client = await KubeClient.connect(self.kubeconfig)
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        ns = self.default_namespace
        # Reading namespaces is the one cluster-wide permission, and optional: without it the
        # functions namespace is still served (and a missing one fails at the token key below).
        with contextlib.suppress(Forbidden), api_errors(f"read namespace {ns!r}", missing=lambda: ConfigError(
                f"--namespace: namespace {ns!r} not found in the cluster at {self.client.host}; "
                f"create it first (kubectl create namespace {ns})")):
            await self.client.core.read_namespace(ns, _request_timeout=API_TIMEOUT)
        self._token_key = await self._load_token_key()
        # One pool of kept-alive connections to every pod: requests reuse them.
        self._session = client_session(aiohttp.TCPConnector(limit=0, keepalive_timeout=30))
        self._endpoints = EndpointTable(self._session, on_release=self._on_release)
        self._activator = Activator(self._endpoints, pods=lambda key: self._function_pods(*key), notify=self._notify,
                                    deployment=lambda key: fn.obj if (fn := self.functions.get(key)) else None,
                                    timeout=self.cold_start_timeout)
        self._secrets = KubeSecrets(self.client, self._namespace, self._secret_users)
        self._served = ServedNamespaces(self.client, ns, lambda name: ServedNamespace(
            self.client, name, on_deployment=self._on_deployment, on_endpoints=self._on_endpoints, on_pod=self._on_pod))
        home = self._served.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(home.settled.wait(), API_TIMEOUT)
        if home.refusal:
            raise ConfigError(f"cannot read functions in namespace {ns!r} at {self.client.host}: {home.refusal}")
        for informer in home.informers:
            try:
                await asyncio.wait_for(informer.synced.wait(), API_TIMEOUT)
            except TimeoutError:
                raise ConfigError(f"cannot list {informer.kind} in the cluster at {self.client.host}: {informer.error or 'no answer'}") from None
        try:
            await asyncio.wait_for(self._served.settled.wait(), API_TIMEOUT)
        except TimeoutError:
            why = self._served.watch.error or "no answer"
            raise ConfigError(f"cannot list namespaces in the cluster at {self.client.host}: {why}") from None

    async def close(self) -> None:
        if self._served is not None:
            await self._served.close()
            self._served = None
        if self._activator is not None:  # its probes use the session
            await self._activator.close()
            self._activator = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._endpoints is not None:
            self._endpoints.pool.close()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _load_token_key(self) -> bytes:
        """The key of every private function's token, kept in a Secret of the functions
        namespace: made by the first gateway, read by every other and by any restart, so a
        token stays valid across gateways with none of them keeping state. (Not derived from
        the admin's credential: that is each gateway's own, and may differ or change.)"""
        ns, core = self.default_namespace, self.client.core
        manifest = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            # Not labelled as a function secret: it is never listed or mounted.
            "metadata": {"name": TOKEN_KEY_SECRET, "namespace": ns, "labels": {"app.kubernetes.io/component": "gateway"}},
            "data": {"key": base64.b64encode(secrets.token_bytes(32)).decode()},
        }
        with contextlib.suppress(Conflict), api_errors(f"create secret {TOKEN_KEY_SECRET!r}"):
            await core.create_namespaced_secret(ns, manifest, _request_timeout=API_TIMEOUT)
        with api_errors(f"read secret {TOKEN_KEY_SECRET!r}"):
            obj = await self.client.raw_json(core.read_namespaced_secret(TOKEN_KEY_SECRET, ns, _preload_content=False, _request_timeout=API_TIMEOUT))
        key = base64.b64decode((obj.get("data") or {}).get("key") or "")
        if len(key) < 16:
            raise ConfigError(f"secret {TOKEN_KEY_SECRET!r} in {ns!r} holds no usable key; delete it and restart the gateway")
        return key

    # ---- watch events -----------------------------------------------------------------------
    def _on_deployment(self, kind: str, obj: dict[str, Any]) -> None:
        key = key_of(obj)
        held = self.functions.get(key)
        d = deployment_request(obj) if kind != "DELETED" and not (obj.get("metadata") or {}).get("deletionTimestamp") else None
        if d is None:
            if held is not None:
                del self.functions[key]
                held.notify()
            return
        if held is None:
            self.functions[key] = KubeFunction(obj, d)
        else:
            held.refresh(obj, d)
            held.notify()
        self.activator.refresh(key)  # a new version: its pods, not the old ones, are probed

    def _on_endpoints(self, kind: str, obj: dict[str, Any]) -> None:
        key = key_of(obj)
        if kind == "DELETED":
            self.endpoints.remove(key)
        else:
            self.endpoints.update(obj)
        self.activator.refresh(key)  # listed ready: no more probing
        self._notify(key)

    def _on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        self.activator.on_pod(kind, obj)  # an address to probe, or a probed pod gone
        self._notify((key_of(obj)[0], str(labels.get(FUNCTION_LABEL, ""))))

    def _notify(self, key: Key) -> None:
        fn = self.functions.get(key)
        if fn is not None:
            fn.notify()

    def _on_release(self, key: Key) -> None:
        fn = self.functions.get(key)
        if fn is not None and fn.waiting:  # a slot freed: the requests waiting for one try again
            fn.notify()

    # ---- namespaces ---------------------------------------------------------------------------
    def namespaces(self) -> list[str]:
        return self.served.names()

    def _namespace(self, namespace: str) -> str:
        """The namespace a call means; NamespaceNotFound for one that takes no functions, and
        Forbidden (or FunctionNotReady) for one whose functions cannot be read (yet)."""
        ns = namespace or self.default_namespace
        served = self.served.get(ns)
        if served is None:
            raise NamespaceNotFound(
                f"namespace {namespace!r} not found; functions go to {self.default_namespace!r} "
                f"or a namespace labelled {NAMESPACE_LABEL}=1"
            )
        served.check()
        return ns

    def _get(self, name: str, namespace: str) -> KubeFunction:
        fn = self.functions.get((self._namespace(namespace), name))
        if fn is None:
            raise FunctionNotFound(name)
        return fn

    def _secret_users(self, secret: str, namespace: str) -> list[str]:
        return [n for (ns, n), fn in self.functions.items() if ns == namespace and secret in fn.deployment.secrets]

    # ---- the provider interface ---------------------------------------------------------------
    def has(self, name: str, namespace: str = "") -> bool:
        try:
            self._get(name, namespace)
        except (FunctionNotFound, NamespaceNotFound, Forbidden, FunctionNotReady):
            return False  # the callers that act on it say why, from the same checks
        return True

    def record(self, name: str, namespace: str = "") -> KubeFunction:
        return self._get(name, namespace)

    async def deploy(self, deployment: FunctionDeployment) -> bool:
        ns = self._namespace(deployment.namespace)
        missing = await self.secrets.missing(deployment.secrets, ns)
        if missing:
            raise BadRequest(f"secret(s) not found in namespace {ns!r}: {', '.join(missing)}; create them first with `streamfaas secret create`")
        created, obj = await apply_function(self.client, deployment, ns)
        served = self.served.get(ns)
        if served is not None:  # (unless the namespace stopped being served meanwhile)
            served.deployments.put(obj)
        return created

    async def remove(self, name: str, namespace: str = "") -> None:
        ns = self._namespace(namespace)
        self._get(name, ns)
        with api_errors(f"delete function {name!r}", missing=not_found(name)):
            await self.client.apps.delete_namespaced_deployment(name, ns, propagation_policy="Background", _request_timeout=API_TIMEOUT)
        await delete_service(self.client, name, ns)  # only if it is the function's
        served = self.served.get(ns)
        if served is not None:
            served.deployments.drop((ns, name), deleted_here=True)

    async def scale(self, name: str, replicas: int, namespace: str = "") -> int:
        ns = self._namespace(namespace)
        fn = self._get(name, ns)
        wanted = fn.scaling.clamp(replicas)
        with api_errors(f"scale function {name!r}", missing=not_found(name)):
            await self.client.apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": wanted}}, _request_timeout=API_TIMEOUT)
        # Seen at once by this gateway (a wake-up must not scale again); the watch confirms it.
        fn.obj = {**fn.obj, "spec": {**(fn.obj.get("spec") or {}), "replicas": wanted}}
        fn.notify()
        return wanted

    def statuses(self, namespace: str = "") -> list[FunctionStatus]:
        ns = self._namespace(namespace)
        return [self.status(name, ns) for (fns, name) in sorted(self.functions) if fns == ns]

    def status(self, name: str, namespace: str = "") -> FunctionStatus:
        ns = self._namespace(namespace)
        fn = self._get(name, ns)
        d, meta = fn.deployment, fn.obj.get("metadata") or {}
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != REQUEST_ANNOTATION and not k.startswith("deployment.kubernetes.io/")}
        return FunctionStatus(
            name=name, image=d.image, namespace=ns, envProcess=d.envProcess, envVars=d.envVars,
            constraints=d.constraints, secrets=d.secrets, labels={**d.labels, FUNCTION_LABEL: name},
            annotations=annotations, limits=d.limits, requests=d.requests, readOnlyRootFilesystem=d.readOnlyRootFilesystem,
            invocationCount=fn.invocations, replicas=replicas_wanted(fn.obj), availableReplicas=replicas_available(fn.obj),
            createdAt=str(meta.get("creationTimestamp") or "").replace("Z", "+00:00"),
            startError=self._start_error(ns, name),
        )

    def _function_pods(self, ns: str, name: str) -> list[dict[str, Any]]:
        served = self.served.get(ns)
        pods = list(served.pods.objects.values()) if served is not None else []
        return [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(FUNCTION_LABEL) == name
                and not (p.get("metadata") or {}).get("deletionTimestamp")]

    def _start_error(self, ns: str, name: str) -> str:
        """Why the function's pods do not start, while none is ready; else ""."""
        if self.endpoints.ready((ns, name)):
            return ""
        for pod in self._function_pods(ns, name):
            error = pod_start_error(pod)
            if error:
                return f"pod {pod['metadata']['name']}: {error}"
        return ""

    async def acquire(self, name: str, namespace: str = "") -> Endpoint:
        """The least loaded ready pod with a free slot (fewer open requests from this gateway
        than ``capacity``). A request that finds every pod full waits, counted in ``waiting``
        (the autoscaler's signal), for a slot or a new pod, with no deadline of its own, as on
        the local provider. With several gateways each counts only its own requests on a pod."""
        ns = self._namespace(namespace)
        key = (ns, name)
        endpoint = self.endpoints.pick(key, self._get(name, ns).capacity)
        if endpoint is not None:
            return endpoint
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cold_start_timeout
        # While it waits, the activator probes the function's new pods itself: the request
        # goes to the first that answers, before the kubelet reports it Ready.
        waiting = self._get(name, ns)
        waiting.waiting += 1
        if self.on_wait is not None:
            self.on_wait(name, ns)
        try:
            with self.activator.waiting(key):
                while True:
                    fn = self._get(name, ns)  # it may have been removed meanwhile
                    endpoint = self.endpoints.pick(key, fn.capacity)
                    if endpoint is not None:
                        return endpoint
                    if replicas_wanted(fn.obj) == 0:
                        await self.scale(name, fn.scaling.wake, ns)  # scaled to zero: a request wakes it
                    timeout: float | None = None
                    if self.endpoints.full(key, fn.capacity):
                        # Waiting for a slot of a running pod is not a cold start: no deadline then.
                        deadline = loop.time() + self.cold_start_timeout
                    else:
                        error = self._start_error(ns, name)
                        if error:  # it cannot start: say why now rather than wait out the cold start
                            # "pod P: REASON", without the message: a container's termination
                            # message is the function's text (it may quote a secret); the
                            # admin's status (startError, describe) has all of it.
                            kind = ": ".join(error.split(": ", 2)[:2])
                            raise FunctionNotReady(f"function {name!r} is failing to start: {kind}; "
                                                   f"`streamfaas describe {name}` shows the error")
                        timeout = deadline - loop.time()
                        if timeout <= 0:
                            raise FunctionNotReady(f"function {name!r} is not ready (waited {self.cold_start_timeout:g}s)")
                    self.activator.refresh(key)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(fn.changed.wait(), timeout)
        finally:
            waiting.waiting -= 1

    def load(self, name: str, namespace: str = "", *, cpu: bool = False) -> FunctionLoad:
        """This gateway's share: several gateways each count their own (summing them is the
        autoscaler's load source's business). CPU: not read here (``cpu_seconds`` None)."""
        ns = self._namespace(namespace)
        fn = self._get(name, ns)
        ready = self.endpoints.ready((ns, name))
        probed = [e for e in self.endpoints.probed((ns, name)).values() if e not in ready]
        draining = self.endpoints.draining((ns, name))  # terminating pods still streaming
        return FunctionLoad(
            inflight=sum(e.inflight for e in [*ready, *probed, *draining]), waiting=fn.waiting, requests=fn.invocations,
            replicas=replicas_wanted(fn.obj), ready=len(ready), draining=len(draining),
        )

    def logs(self, name: str, *, tail: int, since: float | None, follow: bool, namespace: str = "") -> AsyncIterator[LogLine]:
        ns = self._namespace(namespace)
        self._get(name, ns)
        reader = PodLogs(self.client, ns, name, lambda: self._function_pods(ns, name),
                         alive=lambda: (ns, name) in self.functions, changed=self._changed_event(ns, name))
        return reader.read(tail=tail, since=since, follow=follow)

    def _changed_event(self, ns: str, name: str) -> Callable[[], asyncio.Event]:
        gone = asyncio.Event()
        gone.set()  # removed: whoever waits goes on, and finds it gone

        def event() -> asyncio.Event:
            fn = self.functions.get((ns, name))
            return fn.changed if fn is not None else gone

        return event

    def function_token(self, name: str, namespace: str = "") -> str:
        """An HMAC of the function (namespace, name and the Deployment's uid, so a function
        removed and made again gets a new token) under the cluster-kept key: every gateway
        computes the same token, and none stores one."""
        ns = self._namespace(namespace)
        fn = self._get(name, ns)
        uid = str((fn.obj.get("metadata") or {}).get("uid") or "")
        mac = hmac.new(self._token_key, f"{ns}/{name}/{uid}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

