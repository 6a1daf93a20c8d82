"""A deployed function of the local provider, and its secrets as the ``SecretStore`` protocol."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import BodyLimits, parse_bool, parse_int
from ..errors import BadRequest, ConfigError
from .base import least_loaded
from .images import LocalImage
from .models import FunctionDeployment, ScaleLabels
from .oci_rootfs import OciImage
from .replica import Replica

if TYPE_CHECKING:
    from .local import LocalProvider


def _flag(raw: str | None) -> bool:
    if not raw:
        return False
    try:
        return parse_bool(raw, name="buffer_body")
    except ConfigError:
        return False  # the watchdog reports the bad value; the gateway streams as by default


# The templates whose function server is waitress, where each open request holds one of
# ``threads`` threads.
THREADED_TEMPLATES = frozenset({"python3-flask", "python3-flask-debian", "python3-http"})


def _capacity(deployment: FunctionDeployment, image: LocalImage | OciImage) -> int | None:
    """Requests one replica serves at once: its function server's ``threads`` in ``http`` mode
    (each stream holds a thread); None (no limit here) in the modes that fork per request, and
    for a server of the function's own (``envProcess``, an OCI image) unless it says ``threads``:
    an asyncio server holds thousands of streams."""
    env = deployment.envVars
    if (env.get("mode") or "http").strip().lower() != "http":
        return None
    threaded = isinstance(image, LocalImage) and image.lang in THREADED_TEMPLATES and not deployment.envProcess
    if not threaded and "threads" not in env:
        return None
    try:
        return parse_int(env.get("threads") or "64", name="threads", minimum=1)
    except ConfigError:
        return None  # refused at deploy; only a function saved before that check is here


class Turns:
    """Requests waiting for a slot, in arrival order: ``wake(n)`` lets the oldest ``n`` go (a
    freed slot wakes one request, not all of them), ``wake()`` every one."""

    def __init__(self) -> None:
        self._queue: deque[asyncio.Future[None]] = deque()
        self._gone = 0  # turns in the queue whose request left (cancelled or timed out)

    def __len__(self) -> int:
        return sum(not turn.done() for turn in self._queue)

    async def wait(self, timeout: float | None) -> None:
        """Until woken, or ``timeout`` seconds (None: no limit)."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        try:
            await asyncio.wait_for(turn, timeout)
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.wake(1)  # woken, then gone (its client left): the turn passes on
            raise
        finally:
            if turn.cancelled():
                # Left where it is: removing it from the middle costs a walk of the queue, so a
                # crowd of waiters leaving at once (clients gone, or a timeout) would cost the
                # square of their number. wake() skips it; the queue is compacted once at
                # least half of it is such turns.
                self._gone += 1
                if self._gone > 32 and 2 * self._gone > len(self._queue):
                    self._queue = deque(t for t in self._queue if not t.done())
                    self._gone = 0

    def wake(self, count: int | None = None) -> None:
        queue = self._queue
        while queue and (count is None or count > 0):
            turn = queue.popleft()
            if turn.done():
                self._gone -= 1
            else:
                turn.set_result(None)
                if count is not None:
                    count -= 1


class FunctionRecord:
    """A deployed function: what was asked for, and the replicas that serve it."""

    def __init__(self, deployment: FunctionDeployment, image: LocalImage | OciImage, venv: Path | None, created_at: str,
                 replicas: int) -> None:
        self.deployment = deployment
        self.image = image
        self.venv = venv
        self.created_at = created_at
        self.desired = replicas
        self.replicas: list[Replica] = []
        self.invocations = 0
        self._ids = itertools.count(1)
        self._rr = 0
        # Scaled down, still finishing their streams: no new requests, counted in ``load``.
        self.draining: list[Replica] = []
        self.waiting = 0  # requests in ``acquire`` waiting for a ready replica or a free slot
        # Their turns, oldest first: a freed slot or a new replica wakes as many as it can take,
        # not every one of them; ``turns.wake()`` (replicas added, removed or replaced) all.
        self.turns = Turns()
        self.freed = asyncio.Event()  # set (and replaced) when a request on a draining replica ends
        self.capacity = _capacity(deployment, image)
        # Read once here, not on every request of the hot path.
        self.buffer_body = _flag(deployment.envVars.get("buffer_body"))
        self.body_limits = BodyLimits.from_env(deployment.envVars)
        try:
            self.scaling = deployment.scaling()
        except BadRequest:  # refused at deploy; only a function saved before that check is here
            self.scaling = ScaleLabels()

    @property
    def name(self) -> str:
        return self.deployment.service

    def ready_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.ready.is_set() and not r.draining]

    def pick(self) -> Replica | None:
        """The ready replica with the fewest open requests (streams hold them for long), among
        those with a free slot: a request that finds every replica full waits in the gateway,
        and goes to whichever replica frees a slot or becomes ready first (a new one included),
        rather than queueing inside one full replica."""
        self._rr += 1
        ready = self.ready_replicas()
        if self.capacity is not None:
            ready = [r for r in ready if r.inflight < self.capacity]
        return least_loaded(ready, self._rr)

    def full(self) -> bool:
        """Every ready replica is at its capacity (there is at least one)."""
        ready = self.ready_replicas()
        return bool(ready) and self.capacity is not None and all(r.inflight >= self.capacity for r in ready)

    def adopt(self, replica: Replica) -> None:
        replica.on_release = self._released
        replica.on_change = self._replica_changed

    def _released(self, replica: Replica) -> None:
        if replica.draining:
            self.freed.set()
            self.freed = asyncio.Event()
        else:
            self.turns.wake(1)

    def _replica_changed(self, replica: Replica) -> None:
        # Ready: as many as it holds. Failed: every one, to see whether the function can start.
        self.turns.wake(self.capacity if replica.ready.is_set() else None)

    def inflight(self) -> int:
        """Requests open on its replicas, those draining included."""
        return sum(r.inflight for r in self.replicas) + sum(r.inflight for r in self.draining)

    def next_id(self) -> str:
        return str(next(self._ids))

    def start_error(self) -> str:
        """Why the function does not start: the first replica's start report, when none is
        ready and every one failed its last start (crash-looping); else ""."""
        if not self.replicas or any(r.ready.is_set() or not r.failed.is_set() for r in self.replicas):
            return ""
        return self.replicas[0].error


class LocalSecrets:
    """The ``SecretStore`` protocol over the files of ``SecretStore`` (one namespace)."""

    def __init__(self, provider: LocalProvider) -> None:
        self._provider = provider
        self._files = provider.secret_files

    async def names(self, namespace: str = "") -> list[str]:
        self._provider.check_namespace(namespace)
        return self._files.names()

    async def exists(self, name: str, namespace: str = "") -> bool:
        self._provider.check_namespace(namespace)
        return self._files.exists(name)

    async def create(self, name: str, value: bytes, namespace: str = "") -> None:
        self._provider.check_namespace(namespace)
        self._files.create(name, value)

    async def update(self, name: str, value: bytes, namespace: str = "") -> None:
        self._provider.check_namespace(namespace)
        self._files.update(name, value)

    async def delete(self, name: str, namespace: str = "") -> None:
        self._provider.check_namespace(namespace)
        self._files.delete(name, self._provider.secret_users(name))

    async def users(self, name: str, namespace: str = "") -> list[str]:
        self._provider.check_namespace(namespace)
        return self._provider.secret_users(name)
