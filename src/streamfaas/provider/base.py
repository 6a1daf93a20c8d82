"""The ``Provider`` protocol: what the gateway, the CLI and the queue worker ask of wherever
functions run. ``local`` (processes on this machine) and ``kubernetes`` (Deployments, Services,
Secrets) implement it; the gateway imports this module, never a concrete provider.

Namespaces: every call that names a function takes ``namespace``; ``""`` is the provider's
``default_namespace``. A namespace the provider does not serve is a ``NamespaceNotFound``.
Reads (``has``, ``record``, ``status``, ``statuses``, ``namespaces``, ``function_token``) are
synchronous: a provider answers them from what it holds (its state, or a watch's cache), so
the hot path never waits on an API call to learn where a function is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import aiohttp

from ..config import BodyLimits
from ..upstream import Pool
from .logs import LogLine
from .models import FunctionDeployment, FunctionStatus


class Endpoint(Protocol):
    """Where one request goes: a ready replica. The gateway counts the requests it has open
    on it in ``inflight`` (so the provider picks the least loaded one) and sends them through
    ``pool`` to ``url`` (``session``, to the same place, is for probes)."""

    @property
    def id(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def session(self) -> aiohttp.ClientSession: ...

    @property
    def pool(self) -> Pool: ...

    inflight: int


E = TypeVar("E", bound=Endpoint)


def least_loaded(ready: Sequence[E], turn: int) -> E | None:
    """The endpoint with the fewest open requests (a stream holds one for its whole life);
    ties go round in turn (``turn`` counts the picks), so idle replicas share the load."""
    if not ready:
        return None
    n = len(ready)
    best = ready[turn % n]
    for i in range(1, n):
        candidate = ready[(turn + i) % n]
        if candidate.inflight < best.inflight:
            best = candidate
    return best


@dataclass(frozen=True)
class FunctionLoad:
    """A function's load as one gateway sees it now (the autoscaler's input).

    ``inflight``: requests open on its replicas (a stream counts for its whole life), those
    draining included; ``waiting``: requests waiting in ``acquire`` for a replica or a free
    slot; ``requests``: requests sent to it so far (a counter: the autoscaler takes its rate);
    ``replicas``: replicas wanted; ``ready``: ready ones taking requests; ``draining``: ones
    taken out of rotation that still finish their streams; ``cpu_seconds``: CPU time its
    replicas have used (a counter), None where the provider cannot tell.
    """

    inflight: int = 0
    waiting: int = 0
    requests: int = 0
    replicas: int = 0
    ready: int = 0
    draining: int = 0
    cpu_seconds: float | None = None

    @property
    def concurrency(self) -> int:
        """The ``capacity`` signal: what would be open at once if nothing had to wait."""
        return self.inflight + self.waiting


class DeployedFunction(Protocol):
    """A deployed function as the gateway's request path reads it."""

    @property
    def deployment(self) -> FunctionDeployment: ...

    @property
    def buffer_body(self) -> bool: ...

    @property
    def body_limits(self) -> BodyLimits: ...

    invocations: int  # counted by the gateway, per gateway process


class SecretStore(Protocol):
    """Function secrets by name. Values go in and never come out: no call returns one."""

    async def names(self, namespace: str = "") -> list[str]: ...

    async def exists(self, name: str, namespace: str = "") -> bool: ...

    async def create(self, name: str, value: bytes, namespace: str = "") -> None:
        """A new secret; ``Conflict`` if it exists, ``BadRequest`` for a bad name or value."""

    async def update(self, name: str, value: bytes, namespace: str = "") -> None:
        """Replace a value; ``SecretNotFound`` if there is none."""

    async def delete(self, name: str, namespace: str = "") -> None:
        """``SecretNotFound`` if there is none; ``Conflict`` while a function uses it."""

    async def users(self, name: str, namespace: str = "") -> list[str]:
        """The functions that mount it."""


WaitHook = Callable[[str, str], None]


class Provider(Protocol):
    on_wait: WaitHook | None
    """Called with ``(name, namespace)`` each time a request begins to wait in ``acquire`` for
    a replica or a free slot: the autoscaler's cue to look at the function now rather than at
    its next round. Set by the autoscaler; None otherwise."""

    @property
    def name(self) -> str:
        """``local`` or ``kubernetes`` (``/system/info``'s orchestration)."""

    @property
    def default_namespace(self) -> str: ...

    @property
    def secrets(self) -> SecretStore: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def namespaces(self) -> list[str]:
        """The namespaces functions may be deployed to, the default first."""

    async def deploy(self, deployment: FunctionDeployment) -> bool:
        """Create, or update (rolling), a function; True when it was new."""

    async def remove(self, name: str, namespace: str = "") -> None: ...

    async def scale(self, name: str, replicas: int, namespace: str = "") -> int:
        """Set the replicas wanted (clamped to ``com.openfaas.scale.max``); returns what was set."""

    def has(self, name: str, namespace: str = "") -> bool: ...

    def record(self, name: str, namespace: str = "") -> DeployedFunction:
        """The function; ``FunctionNotFound`` if there is none."""

    def status(self, name: str, namespace: str = "") -> FunctionStatus: ...

    def statuses(self, namespace: str = "") -> list[FunctionStatus]: ...

    async def acquire(self, name: str, namespace: str = "") -> Endpoint:
        """A ready endpoint for one request: the least loaded one. A function scaled to zero is
        woken and waited for up to the cold-start timeout; ``FunctionNotReady`` (503) then, or
        at once when its replicas cannot start, with the reason."""

    def load(self, name: str, namespace: str = "", *, cpu: bool = False) -> FunctionLoad:
        """What this gateway has open on the function and waiting for it, now; with ``cpu``,
        also the CPU time its replicas used, where the provider can tell."""

    def logs(self, name: str, *, tail: int, since: float | None, follow: bool, namespace: str = "") -> AsyncIterator[LogLine]:
        """The last ``tail`` lines (all if negative) at or after ``since`` (Unix seconds), then
        with ``follow`` new ones as they come, until the function goes away."""

    def function_token(self, name: str, namespace: str = "") -> str:
        """The bearer token of a private function: the same for every gateway, every time."""
