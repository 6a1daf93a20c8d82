"""The local provider: functions run as processes on this machine (the embedded default).

State lives under the state directory (``functions/*.json``), so a restarted gateway finds its
functions again and starts their replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import itertools
import json
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from ..config import parse_duration, watchdog_setting_errors
from ..errors import (
    BadRequest,
    ConfigError,
    DeployError,
    FunctionNotFound,
    FunctionNotReady,
    ImageNotFound,
    NamespaceNotFound,
)
from ..sandbox import (
    SECRETS_MOUNT,
    build_rootfs_spec,
    build_spec,
    bwrap_path,
    function_uid,
    spec_env,
    warn_unsandboxed,
)
from .base import FunctionLoad, WaitHook
from .images import ImageStore, LocalImage
from .launcher import ForkServer, ForkServerUnavailable
from .logs import LogLine, follow_log
from .models import DEFAULT_NAMESPACE, FunctionDeployment, FunctionStatus
from .oci_rootfs import OciImage, OciStore, parse_reference
from .record import FunctionRecord, LocalSecrets
from .replica import Replica, ReplicaSpec, error_kind
from .secrets import SecretStore, private_dir, write_private
from .venvs import VenvCache

# The few variables a function process needs from the platform's environment; nothing else
# (no credentials) leaks from the gateway into functions.
_INHERITED_ENV = ("LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR")
COUNTS_SAVE_INTERVAL = 10.0  # seconds between saves of the invocation counts, when they changed
# The watchdog's own environment: the platform's, fixed; never the function's.
_WATCHDOG_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")


class LocalProvider:
    name = "local"
    default_namespace = DEFAULT_NAMESPACE

    def __init__(self, state_dir: Path, *, cold_start_timeout: float = 60.0, sandbox: bool = True) -> None:
        self.state_dir = state_dir
        self.on_wait: WaitHook | None = None
        self.sandbox_wanted = sandbox
        self.bwrap = bwrap_path() if sandbox else None
        # A root platform runs each sandboxed function as its own unprivileged uid, which then
        # owns that function's secret copies (and nothing else).
        self.run_as_uid = self.bwrap is not None and os.geteuid() == 0
        self.secret_files = SecretStore(state_dir / "secrets", state_dir / "run", owner=self.function_uid)
        self.secrets = LocalSecrets(self)
        self.images = ImageStore(state_dir / "images")
        self.oci_images = OciStore(state_dir / "oci")
        self._restoring = False
        self.venvs = VenvCache(state_dir / "venvs")
        self.functions_dir = state_dir / "functions"
        self.logs_dir = state_dir / "logs"
        self.cache_dir = state_dir / "cache"
        self.cold_start_timeout = cold_start_timeout
        self.functions: dict[str, FunctionRecord] = {}
        self._deploy_lock = asyncio.Lock()
        # Invocation counts outlive the gateway: saved now and then and on close, never per
        # request (a SIGKILL loses at most the last COUNTS_SAVE_INTERVAL's counts).
        self.counts_file = state_dir / "invocations.json"
        self._saved_counts: dict[str, int] = {}
        self._counts_saver: asyncio.Task[None] | None = None
        self.fork_server: ForkServer | None = None
        self._drains: dict[Replica, asyncio.Task[None]] = {}  # replicas draining after a scale-down

    # ---- lifecycle -------------------------------------------------------------------------
    def function_uid(self, name: str) -> int | None:
        return function_uid(name) if self.run_as_uid else None

    async def start(self) -> None:
        # Owner-only: queue bodies, logs, deployments and secrets are nobody else's business
        # (the gateway's umask is 077 too; images and venvs are opened up for function uids).
        private_dir(self.state_dir)
        for folder in (self.functions_dir, self.logs_dir, self.cache_dir):
            private_dir(folder)
        # Where replicas' watchdogs and function servers listen (Unix sockets); short, for the
        # 108-byte path limit. A gateway that was killed left its folder: remove that first.
        record = self.state_dir / "run" / "sockets-dir"
        with contextlib.suppress(OSError):
            stale = Path(record.read_text().strip())
            if stale.name.startswith("streamfaas-") and stale.parent == Path(tempfile.gettempdir()) and stale.stat().st_uid == os.geteuid():
                shutil.rmtree(stale, ignore_errors=True)
        self.sockets_dir = Path(tempfile.mkdtemp(prefix="streamfaas-"))
        write_private(record, f"{self.sockets_dir}\n".encode(), 0o600)
        self._socket_ids = itertools.count(1)
        # One process that has imported the watchdog's modules forks every replica's watchdog:
        # they share those pages. Started with the platform's fixed environment, never a
        # function's; without it, replicas spawn their watchdogs directly.
        self.fork_server = ForkServer({k: os.environ[k] for k in _WATCHDOG_ENV if k in os.environ})
        try:
            await self.fork_server.start()
        except ForkServerUnavailable as exc:
            print(f"streamfaas: {exc}; watchdogs are started directly", file=sys.stderr, flush=True)
            self.fork_server = None
        self._restoring = True  # OCI images: what each function ran, without asking registries
        for path in sorted(self.functions_dir.glob("*.json")):
            try:
                saved = json.loads(path.read_text())
                deployment = FunctionDeployment.model_validate(saved["deployment"])
                await self._apply(deployment, replicas=int(saved["replicas"]), created_at=saved["createdAt"])
            except Exception as exc:  # one broken function must not keep the others down
                print(f"streamfaas: cannot restore {path.name}: {exc}", file=sys.stderr, flush=True)
        self._restoring = False
        self._restore_counts()
        self._counts_saver = asyncio.create_task(self._save_counts_periodically())

    async def close(self) -> None:
        if self._counts_saver is not None:
            self._counts_saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._counts_saver
        records = list(self.functions.values())
        await asyncio.gather(*(self._stop_replicas(r, list(r.replicas)) for r in records))
        await asyncio.gather(*self._drains.values(), return_exceptions=True)
        self._save_counts()  # after the replicas: the requests they served are counted
        if self.fork_server is not None:
            await self.fork_server.close()
        shutil.rmtree(self.sockets_dir, ignore_errors=True)

    # ---- the provider interface ---------------------------------------------------------
    async def deploy(self, deployment: FunctionDeployment) -> bool:
        """Create or update (rolling) a function; True when it was new."""
        bad = watchdog_setting_errors(deployment.envVars)
        if bad:  # refused now, not left to a replica that would crash-loop on it
            raise ConfigError("; ".join(f"envVars.{key}: {why}" for key, why in bad))
        self.check_namespace(deployment.namespace)
        await self._prepare_venv(deployment)
        async with self._deploy_lock:
            existing = self.functions.get(deployment.service)
            # An update keeps the replicas it had, within a new com.openfaas.scale.max.
            replicas = deployment.scaling().clamp(existing.desired) if existing else deployment.initial_replicas()
            created = existing.created_at if existing else dt.datetime.now(dt.UTC).isoformat()
            await self._apply(deployment, replicas=replicas, created_at=created)
            return existing is None

    def namespaces(self) -> list[str]:
        return [DEFAULT_NAMESPACE]

    def check_namespace(self, namespace: str) -> None:
        if namespace and namespace != DEFAULT_NAMESPACE:
            raise NamespaceNotFound(f"namespace {namespace!r} not found; the only namespace is {DEFAULT_NAMESPACE!r}")

    async def remove(self, name: str, namespace: str = "") -> None:
        self.check_namespace(namespace)
        async with self._deploy_lock:
            record = self._get(name)
            del self.functions[name]
            record.turns.wake()  # its waiting requests find it gone
            (self.functions_dir / f"{name}.json").unlink(missing_ok=True)
            await self._stop_replicas(record, list(record.replicas))
            self.secret_files.forget(name)

    def function_token(self, name: str, namespace: str = "") -> str:
        """The bearer token of a private function, made on first use (file mode 0600)."""
        self._get(name, namespace)
        path = self.state_dir / "run" / name / "token"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            token = secrets.token_urlsafe(32)
            write_private(path, token.encode(), 0o600)
            return token

    def secret_users(self, secret: str) -> list[str]:
        return [n for n, r in self.functions.items() if secret in r.deployment.secrets]

    async def scale(self, name: str, replicas: int, namespace: str = "") -> int:
        """Set the replicas wanted, at most the function's ``com.openfaas.scale.max``; returns
        what was set."""
        record = self._get(name, namespace)
        record.desired = record.scaling.clamp(replicas)
        self._save(record)
        await self._reconcile(record)
        return record.desired

    def statuses(self, namespace: str = "") -> list[FunctionStatus]:
        self.check_namespace(namespace)
        return [self.status(name) for name in sorted(self.functions)]

    def status(self, name: str, namespace: str = "") -> FunctionStatus:
        record = self._get(name, namespace)
        d = record.deployment
        return FunctionStatus(
            name=d.service,
            image=d.image,
            namespace=d.namespace or DEFAULT_NAMESPACE,
            envProcess=d.envProcess or record.image.fprocess,
            envVars=d.envVars,
            constraints=d.constraints,
            secrets=d.secrets,
            labels={**d.labels, "faas_function": d.service},
            annotations=d.annotations,
            limits=d.limits,
            requests=d.requests,
            readOnlyRootFilesystem=d.readOnlyRootFilesystem,
            invocationCount=record.invocations,
            replicas=record.desired,
            availableReplicas=len(record.ready_replicas()),
            createdAt=record.created_at,
            startError=record.start_error(),
        )

    def has(self, name: str, namespace: str = "") -> bool:
        return namespace in ("", DEFAULT_NAMESPACE) and name in self.functions

    def record(self, name: str, namespace: str = "") -> FunctionRecord:
        return self._get(name, namespace)

    async def acquire(self, name: str, namespace: str = "") -> Replica:
        """A ready replica with a free slot for a request; a function scaled to zero is started
        and waited for. A request that finds every replica full waits (counted in ``waiting``,
        the autoscaler's signal) for a slot or a new replica, with no deadline of its own: it
        would have queued inside the replica before."""
        record = self._get(name, namespace)
        replica = record.pick()
        if replica is not None:
            return replica
        return await self._wait_for_replica(name, record)

    async def _wait_for_replica(self, name: str, record: FunctionRecord) -> Replica:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cold_start_timeout
        record.waiting += 1  # always on ``record``, the one it waits on now (see the end of the loop)
        if self.on_wait is not None:
            self.on_wait(name, record.deployment.namespace)
        try:
            while True:
                replica = record.pick()
                if replica is not None:
                    return replica
                full = record.full()
                if record.desired == 0:
                    # Scaled to zero, before this request or while it waited for a start: start it
                    # (to com.openfaas.scale.min), as a request arriving now would.
                    await self.scale(name, record.scaling.wake)
                if not record.replicas:
                    raise FunctionNotReady(f"function {name!r} has no replicas")
                error = "" if full else record.start_error()
                if error:  # crash-looping: say why now rather than wait out the cold start
                    raise FunctionNotReady(f"function {name!r} is failing to start: {error_kind(error)}; "
                                           f"`streamfaas describe {name}` shows the error")
                # Waiting for a slot of a running replica is not a cold start: no deadline then.
                timeout = None if full else deadline - loop.time()
                if timeout is not None and timeout <= 0:
                    raise FunctionNotReady(f"function {name!r} is not ready (waited {self.cold_start_timeout:g}s)")
                # Woken by a freed slot, a replica that became ready or failed to start, or a
                # change of replicas (record.turns).
                await record.turns.wait(timeout)
                if full:
                    deadline = loop.time() + self.cold_start_timeout
                current = self._get(name)  # it may have been updated or removed meanwhile
                if current is not record:
                    record.waiting -= 1
                    current.waiting += 1
                    record = current
        finally:
            record.waiting -= 1

    def load(self, name: str, namespace: str = "", *, cpu: bool = False) -> FunctionLoad:
        record = self._get(name, namespace)
        used = sum(r.cpu_seconds() for r in [*record.replicas, *record.draining]) if cpu else None
        return FunctionLoad(
            inflight=record.inflight(),
            waiting=record.waiting,
            requests=record.invocations,
            replicas=record.desired,
            ready=len(record.ready_replicas()),
            draining=len(record.draining),
            cpu_seconds=used,
        )

    async def logs(self, name: str, *, tail: int, since: float | None, follow: bool, namespace: str = "") -> AsyncIterator[LogLine]:
        self._get(name, namespace)
        async for line in follow_log(self.logs_dir / f"{name}.log", name, tail=tail, since=since, follow=follow, alive=lambda: name in self.functions):
            yield line

    # ---- internals --------------------------------------------------------------------------
    def _get(self, name: str, namespace: str = "") -> FunctionRecord:
        self.check_namespace(namespace)
        try:
            return self.functions[name]
        except KeyError:
            raise FunctionNotFound(name) from None

    def _restore_counts(self) -> None:
        try:
            saved = json.loads(self.counts_file.read_text())
        except (OSError, ValueError):
            return  # none yet (or unreadable): counts start from 0, as they did before
        if not isinstance(saved, dict):
            return
        for name, count in saved.items():
            if name in self.functions and isinstance(count, int) and count >= 0:
                self.functions[name].invocations = max(self.functions[name].invocations, count)
        self._saved_counts = {n: r.invocations for n, r in self.functions.items()}

    def _save_counts(self) -> None:
        counts = {n: r.invocations for n, r in self.functions.items()}
        if counts == self._saved_counts:
            return
        try:
            write_private(self.counts_file, json.dumps(counts).encode(), 0o600)
        except OSError as exc:
            print(f"streamfaas: cannot save invocation counts: {exc}", file=sys.stderr, flush=True)
            return
        self._saved_counts = counts

    async def _save_counts_periodically(self) -> None:
        while True:
            await asyncio.sleep(COUNTS_SAVE_INTERVAL)
            self._save_counts()

    def _save(self, record: FunctionRecord) -> None:
        data = {"deployment": record.deployment.model_dump(), "replicas": record.desired, "createdAt": record.created_at}
        path = self.functions_dir / f"{record.name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)

    def _replica_spec(self, record: FunctionRecord) -> ReplicaSpec:
        d = record.deployment
        sandboxed = self.bwrap is not None
        oci = record.image if isinstance(record.image, OciImage) else None
        if oci is not None:  # its own world: the image's environment and the deployment's only
            env = oci.function_env(d.envVars, d.envProcess)
        else:
            assert record.venv is not None
            env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
            env.update(d.envVars)
            bin_dir = str(record.venv / "bin")
            env["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
            env["VIRTUAL_ENV"] = str(record.venv)
            env["HOME"] = "/tmp" if sandboxed else str(self.cache_dir)
            # Read the platform's compiled bytecode where it lies; write none into the image
            # (immutable) or a sandbox (whose writes vanish): the function's own files are small.
            env["PYTHONDONTWRITEBYTECODE"] = "1"
            env["fprocess"] = d.envProcess or record.image.fprocess
        env["STREAMFAAS_FUNCTION"] = d.service
        secrets_dir = self.secret_files.materialise(d.service, d.secrets)
        watchdog_env = {k: os.environ[k] for k in _WATCHDOG_ENV if k in os.environ}
        watchdog_env["STREAMFAAS_FUNCTION"] = d.service
        if self.bwrap is not None:
            uid = self.function_uid(d.service)
            if oci is not None:
                spec = build_rootfs_spec(bwrap=self.bwrap, rootfs=oci.rootfs, chdir=oci.workdir, secrets_dir=secrets_dir, uid=uid)
            else:
                assert isinstance(record.image, LocalImage) and record.venv is not None
                if uid is not None:
                    record.image.make_readable()
                spec = build_spec(bwrap=self.bwrap, image_dir=record.image.path, venv_dir=record.venv,
                                  secrets_dir=secrets_dir, uid=uid)
                env["STREAMFAAS_SECRETS_DIR"] = SECRETS_MOUNT
            watchdog_env.update(spec_env(spec))
        else:
            warn_unsandboxed(asked=not self.sandbox_wanted)
            env["STREAMFAAS_SECRETS_DIR"] = str(secrets_dir)
        watchdog_env["STREAMFAAS_FUNCTION_ENV"] = json.dumps(env)
        drain = d.envVars.get("drain_timeout", "30s")
        try:
            drain_s = parse_duration(drain, name="drain_timeout")
        except ConfigError:
            drain_s = 30.0
        return ReplicaSpec(env=watchdog_env, cwd=record.image.path, log=self.logs_dir / f"{d.service}.log", drain_timeout=drain_s,
                           fork_server=self.fork_server)

    async def _apply(self, deployment: FunctionDeployment, *, replicas: int, created_at: str) -> None:
        missing = self.secret_files.missing(deployment.secrets)
        if missing:
            raise BadRequest(f"secret(s) not found: {', '.join(missing)}; create them first with `streamfaas secret create`")
        image = await self._image(deployment)
        venv = None
        if isinstance(image, LocalImage):
            requirements = image.requirements()
            venv = await self.venvs.ensure(requirements, log=self.logs_dir / f"{deployment.service}.log", function=deployment.service)
        old = self.functions.get(deployment.service)
        record = FunctionRecord(deployment, image, venv, created_at, replicas)
        if old is not None:
            record.invocations = old.invocations
        self._save(record)
        if old is None:
            self.functions[record.name] = record
            await self._reconcile(record, wait=False)
            return
        # Rolling update: the new replicas are ready before the old ones stop taking requests.
        if replicas > 0:
            await self._reconcile(record, wait=True)
            if not record.ready_replicas():
                error = record.start_error()
                await self._stop_replicas(record, list(record.replicas))
                self._save(old)
                why = f"it failed to start:\n{error}" if error else f"it was not ready within {self.cold_start_timeout:g}s"
                raise DeployError(f"update of {record.name!r} failed, the old version keeps serving; {why}")
        self.functions[record.name] = record
        old.turns.wake()  # its waiting requests go on waiting on the new record
        await self._stop_replicas(old, list(old.replicas))

    async def _prepare_venv(self, deployment: FunctionDeployment) -> None:
        """Build a folder image's venv before the deploy lock is taken: pip runs the requirements'
        build backends (for up to the install's timeout), and other deploys and removals need not
        wait for them. ``_apply`` then finds it built (the cache has a lock per venv); what this
        leaves to it (an OCI image, a missing image or secret) it reports as before."""
        try:
            image = self.images.resolve(deployment.image)
        except ImageNotFound:
            return
        if self.secret_files.missing(deployment.secrets):
            return
        requirements = image.requirements()
        await self.venvs.ensure(requirements, log=self.logs_dir / f"{deployment.service}.log", function=deployment.service)

    async def _image(self, deployment: FunctionDeployment) -> LocalImage | OciImage:
        """A folder image when the name resolves in the image store; else an OCI image, when the
        name has a registry host (or is an archive), pulled and unpacked (oci_rootfs.py)."""
        try:
            return self.images.resolve(deployment.image)
        except ImageNotFound:
            ref = parse_reference(deployment.image)
            if ref is None:
                raise
        if self.bwrap is None:
            raise BadRequest(f"image {deployment.image!r} is an OCI image: running one needs the sandbox (bubblewrap), "
                             "and this gateway runs functions unsandboxed")
        image = await self.oci_images.ensure(ref, prefer_cached=self._restoring)
        if not (deployment.envProcess or image.fprocess):
            raise BadRequest(f"image {deployment.image!r} has no fprocess: set envProcess (faas-cli deploy --fprocess)")
        return image

    async def _reconcile(self, record: FunctionRecord, *, wait: bool = False) -> None:
        spec = self._replica_spec(record)
        started: list[Replica] = []
        while len(record.replicas) < record.desired and record.draining:
            # Scaled up again while some still drain: take those back, they are warm.
            replica = record.draining.pop()
            replica.draining = False
            record.replicas.append(replica)
        while len(record.replicas) < record.desired:
            replica = Replica(record.name, record.next_id(), spec, self.sockets_dir / f"{next(self._socket_ids)}.sock")
            record.adopt(replica)
            record.replicas.append(replica)
            replica.start()
            started.append(replica)
        if len(record.replicas) > record.desired:
            self._scale_down(record, len(record.replicas) - record.desired)
        record.turns.wake()
        if wait and started:
            await _first_ready(started, self.cold_start_timeout)

    def _scale_down(self, record: FunctionRecord, count: int) -> None:
        """Take ``count`` replicas out of rotation: those not ready first (nothing to lose),
        then the idle, then the least loaded. Each drains (its open streams finish) in the
        background, so a scale request never waits for a stream."""
        order = sorted(record.replicas, key=lambda r: (r.ready.is_set(), r.inflight))
        for replica in order[:count]:
            record.replicas.remove(replica)
            replica.draining = True
            record.draining.append(replica)
            running = self._drains.get(replica)
            if running is not None and not running.done():  # taken back and given up again
                continue
            task = asyncio.create_task(self._drain(record, replica), name=f"drain {record.name}/{replica.id}")
            self._drains[replica] = task
            task.add_done_callback(functools.partial(self._drained, replica))

    def _drained(self, replica: Replica, task: asyncio.Task[None]) -> None:
        if self._drains.get(replica) is task:
            del self._drains[replica]

    async def _drain(self, record: FunctionRecord, replica: Replica) -> None:
        """Stop ``replica`` once its last request ends, or after its ``drain_timeout`` (then
        its watchdog, on SIGTERM, gives open streams that long again): never cut a stream
        that ends in time. Taken back (``draining`` cleared) by a scale-up: left running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + replica.spec.drain_timeout
        while replica.draining and replica.inflight > 0 and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(record.freed.wait(), deadline - loop.time())
        if not replica.draining:
            return
        if replica in record.draining:
            record.draining.remove(replica)
        await replica.stop()

    async def _stop_replicas(self, record: FunctionRecord, replicas: list[Replica]) -> None:
        for r in replicas:
            if r in record.replicas:
                record.replicas.remove(r)
        # Those still draining go too (removal, update, close): their watchdogs drain them.
        draining, record.draining = record.draining, []
        for r in draining:
            r.draining = False  # their drain tasks end without stopping them twice
        await asyncio.gather(*(r.stop() for r in [*replicas, *draining]))


async def _first_ready(replicas: list[Replica], timeout: float) -> None:
    """Wait until every replica is ready or has failed once, within ``timeout``."""

    async def settle(r: Replica) -> None:
        ready = asyncio.ensure_future(r.ready.wait())
        failed = asyncio.ensure_future(r.failed.wait())
        try:
            await asyncio.wait({ready, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            failed.cancel()

    try:
        await asyncio.wait_for(asyncio.gather(*(settle(r) for r in replicas)), timeout)
    except TimeoutError:
        pass
