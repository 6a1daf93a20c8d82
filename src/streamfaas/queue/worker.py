"""The queue worker: leases jobs, runs each through the gateway, POSTs the result to its callback.

A job is acked only once it is done: its callback answered 2xx, or it had none. A function 5xx
(or 429) or a connection error is retried with exponential backoff; after the last retry the job
goes to the dead-letter list. A failed callback is retried the same way, but by this worker,
with the answer it holds, while it keeps the job's lease: the function does not run again
because the receiver was down (only if the worker itself dies first). On shutdown, in-flight
jobs get the drain timeout to finish; the rest go back to the queue at once.

A callback goes only where the callback policy allows (callbacks.py): an address in its URL is
checked before the function runs, a name on the addresses it resolves to as the worker connects,
and redirects are not followed. A refused callback is a permanent failure: the job is
dead-lettered at once, with the reason, and not retried.

With several gateways, a gateway that accepts no connection is skipped at once for the next one
(nothing reached it, so nothing runs twice); one that dies during a call fails that attempt,
which is retried, through another gateway, like any other failure.

A job reaches only the function it was submitted to, and never with the admin's credentials:
a private function is called with its own bearer token, which is valid for it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from ..config import QueueConfig
from ..errors import StreamfaasError
from ..proxy import forward_headers
from .base import FunctionSlots, JobQueue, Lease, QueueUnavailable
from .callbacks import (
    CallbackPolicy,
    CallbackRefused,
    PolicyResolver,
    scrub_callback,
    shown_callback,
)
from .gateways import GatewayList
from .job import AUTH_HEADERS, Job
from .metrics import QueueMetrics

log = logging.getLogger("streamfaas.queue")
_ERROR_TEXT = 300  # characters of an error body kept in last_error
# A gateway pod that is gone leaves an address nothing answers: fail over after this, not after
# the whole invoke timeout. The total is bounded by invoke_timeout instead of aiohttp's default.
_CALL_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5.0)
# Errors raised before the request reached a gateway: the next one may take it at once.
_NOT_CONNECTED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)

# The bearer token of a private function, None for a public one. Raises TokenUnavailable when
# it cannot tell now (the attempt is retried).
FunctionTokens = Callable[[str], Awaitable[str | None]]


class TokenUnavailable(StreamfaasError):
    """A private function's token cannot be had now (the admin API did not answer)."""

    http_status = 503


async def no_tokens(function: str) -> str | None:
    return None


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str | None
    body: bytes


@dataclass(frozen=True)
class Outcome:
    status: int  # the function's status code (0: no answer)
    retry_reason: str | None = None  # function | connection | callback; None: done
    error: str = ""
    permanent: bool = False  # no retry can succeed: dead-letter it now
    spent: bool = False  # its retries were spent in this attempt (the callback's): dead-letter it now


def backoff_delay(config: QueueConfig, failed_before: int) -> float:
    """The delay before the next attempt, doubling from ``backoff`` up to ``backoff_max``,
    with ±20% jitter so jobs that failed together do not all come back together."""
    delay = min(config.backoff_max, config.backoff * 2 ** min(failed_before, 62))
    return float(delay * random.uniform(0.8, 1.2))


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class QueueWorker:
    """Runs jobs from ``queue`` through the gateway(s) at ``gateways``: a URL, several, or a
    GatewayList shared with whatever else calls them."""

    def __init__(self, queue: JobQueue, config: QueueConfig, gateways: str | Sequence[str] | GatewayList, *,
                 metrics: QueueMetrics | None = None, name: str | None = None,
                 tokens: FunctionTokens = no_tokens) -> None:
        self.queue = queue
        self.config = config
        if isinstance(gateways, str):
            gateways = (gateways,)
        self.gateways = gateways if isinstance(gateways, GatewayList) else GatewayList(gateways)
        self.metrics = metrics
        self.name = name or worker_id()
        # What a callback names this worker by: opaque, since a callback goes to whatever address
        # an anonymous caller gave, and the name is the host's (on Kubernetes, the pod's) and a pid.
        self.callback_name = secrets.token_hex(6)
        self._tokens = tokens
        self.callback_policy = CallbackPolicy(config.callback_allow)
        self._session: aiohttp.ClientSession | None = None
        # Callbacks have their own connections, made only to addresses the policy allows.
        self._callback_session: aiohttp.ClientSession | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then drain and return."""
        slots = FunctionSlots(self.config.concurrency)
        running: set[asyncio.Task[None]] = set()

        def deliver(lease: Lease) -> None:
            task = asyncio.create_task(self._process(lease, slots), name=f"job-{lease.job.call_id}")
            running.add(task)
            task.add_done_callback(running.discard)

        def client(resolver: PolicyResolver | None = None) -> aiohttp.ClientSession:
            return aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, resolver=resolver),
                auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type", "Accept"),
            )

        log.info("queue worker %s: callbacks may go to %s", self.name, self.callback_policy.describe())
        async with client() as session, client(PolicyResolver(self.callback_policy)) as callbacks:
            self._session = session
            self._callback_session = callbacks
            try:
                while not stop.is_set():
                    try:
                        await self.queue.consume(slots, deliver, stop)
                    except Exception:  # a bug or an outage must not end the worker for good
                        log.exception("queue worker: leasing failed; trying again")
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), 1.0)
            finally:
                await self._drain(running)
                self._session = self._callback_session = None

    async def _drain(self, running: set[asyncio.Task[None]]) -> None:
        if not running:
            return
        log.info("queue worker: waiting up to %gs for %d in-flight jobs", self.config.drain_timeout, len(running))
        _, late = await asyncio.wait(set(running), timeout=self.config.drain_timeout)
        for task in late:
            task.cancel()  # _process puts its job back in the queue
        if late:
            await asyncio.wait(late)

    async def _keep_alive(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self.config.lease / 3)
            try:
                await lease.keep_alive()
            except (QueueUnavailable, OSError) as exc:
                log.warning("queue worker: cannot extend the lease of %s: %s", lease.job.call_id, exc)

    async def _process(self, lease: Lease, slots: FunctionSlots) -> None:
        job = lease.job
        fn = job.function
        if self.metrics is not None and job.attempts == 0:
            self.metrics.wait_seconds.labels(function_name=fn).observe(max(0.0, time.time() - job.submitted_at))
        heartbeat = asyncio.create_task(self._keep_alive(lease))
        try:
            outcome = await self._attempt(job, lease.note)
            heartbeat.cancel()
            await self._settle(lease, outcome)
        except asyncio.CancelledError:
            # Shutdown past the drain timeout: the job goes back at once, and this try is not counted.
            with contextlib.suppress(Exception):
                await asyncio.shield(lease.release())
            raise
        except Exception:
            log.exception("queue worker: job %s failed unexpectedly; it runs again after its lease", job.call_id)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            slots.give(fn)

    async def _settle(self, lease: Lease, outcome: Outcome) -> None:
        job = lease.job
        fn = job.function
        metrics = self.metrics
        try:
            if outcome.retry_reason is None:
                await lease.ack()
                if metrics is not None:
                    metrics.completed.labels(function_name=fn, code=str(outcome.status)).inc()
                    metrics.done_seconds.labels(function_name=fn).observe(max(0.0, time.time() - job.submitted_at))
            elif outcome.permanent or outcome.spent or job.attempts + 1 > self.config.max_retries:
                log.warning("queue worker: %s (%s) dead-lettered after %d attempts%s: %s", job.call_id, fn,
                            job.attempts + 1, " (not retried)" if outcome.permanent else "", outcome.error)
                await lease.dead_letter(outcome.error)
                if metrics is not None:
                    metrics.failures.labels(function_name=fn).inc()
            else:
                delay = backoff_delay(self.config, job.attempts)
                log.info("queue worker: %s (%s) attempt %d failed, retry in %.2fs: %s",
                         job.call_id, fn, job.attempts + 1, delay, outcome.error)
                await lease.retry(outcome.error, delay)
                if metrics is not None:
                    metrics.retries.labels(function_name=fn, reason=outcome.retry_reason).inc()
        except (QueueUnavailable, OSError) as exc:
            # The queue could not record it: the lease runs out and the job runs again.
            log.warning("queue worker: cannot record the outcome of %s: %s", job.call_id, exc)

    async def _attempt(self, job: Job, note: Callable[[str], Awaitable[None]]) -> Outcome:
        began = time.perf_counter()
        if job.callback_url:
            try:
                # An address refused here is refused at submit: the job was stored by a gateway
                # with a wider policy, an older version, or by other means. Nothing is run.
                self.callback_policy.check_url(job.callback_url)
            except CallbackRefused as exc:
                return _refused(0, job.callback_url, exc)
        try:
            job.function_url(self.gateways.urls[0])
        except ValueError as exc:
            # Refused at submit: only a job stored by an older version, or written into the queue
            # by other means, gets here. It is answered as the gateway would, and not retried.
            answer: Answer | Outcome = Answer(400, "text/plain; charset=utf-8", f"{exc}\n".encode())
        else:
            answer = await self._call(job)
        if isinstance(answer, Outcome):
            return answer
        duration = time.perf_counter() - began
        status = answer.status
        if status >= 500 or status == 429:
            text = answer.body[:_ERROR_TEXT].decode(errors="replace").strip()
            return Outcome(status, "function", f"function answered HTTP {status}: {text}")
        if job.callback_url:
            return await self._deliver(job, job.callback_url, answer, duration, note)
        return Outcome(status)

    async def _deliver(self, job: Job, url: str, answer: Answer, duration: float,
                       note: Callable[[str], Awaitable[None]]) -> Outcome:
        """POST the answer to the job's callback until it is taken, retrying a failure after the
        backoff (the retries left to the job), the function's answer held meanwhile: a receiver
        that is down must not make the function run, and cost, again."""
        status = answer.status
        tries = 0
        while True:
            try:
                error = await self._callback(job, status, answer.content_type, answer.body, duration)
            except CallbackRefused as exc:
                return _refused(status, url, exc)
            if not error:
                return Outcome(status)
            tries += 1
            if job.attempts + tries > self.config.max_retries:
                return Outcome(status, "callback", f"{error} ({tries} {'try' if tries == 1 else 'tries'} "
                               "with one answer of the function, not run again)", spent=True)
            delay = backoff_delay(self.config, job.attempts + tries - 1)
            log.info("queue worker: %s (%s) callback try %d failed, again in %.2fs: %s",
                     job.call_id, job.function, tries, delay, error)
            if self.metrics is not None:
                self.metrics.retries.labels(function_name=job.function, reason="callback").inc()
            try:
                await note(error)  # `queue list` shows why the job is still there
            except (QueueUnavailable, OSError) as exc:
                log.warning("queue worker: cannot record the callback failure of %s: %s", job.call_id, exc)
            await asyncio.sleep(delay)

    async def _call(self, job: Job) -> Answer | Outcome:
        """Run the job through a gateway: its answer, or the Outcome of a failed attempt."""
        headers = forward_headers(CIMultiDict(job.headers), drop=(*AUTH_HEADERS, "X-Call-Id"))
        headers["X-Call-Id"] = job.call_id
        try:
            token = await self._tokens(job.function) if job.private_ok else None
        except TokenUnavailable as exc:
            return Outcome(0, "connection", str(exc))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        refused: list[str] = []
        for gateway in self.gateways.ordered():
            answer = await self._call_one(job, job.function_url(gateway), headers)
            if isinstance(answer, Answer):
                self.gateways.succeeded(gateway)
                return answer
            if isinstance(answer, Outcome):
                return answer
            self.gateways.failed(gateway)
            if not isinstance(answer, _NOT_CONNECTED):
                # It may have run the function: this attempt fails, and the retry (counted,
                # after the backoff) goes to another gateway.
                return Outcome(0, "connection", f"the gateway at {gateway} failed during the call: {_describe(answer)}")
            refused.append(f"{gateway}: {_describe(answer)}")
        return Outcome(0, "connection", "cannot reach a gateway: " + "; ".join(refused))

    async def _call_one(self, job: Job, url: URL, headers: CIMultiDict[str]) -> Answer | Outcome | aiohttp.ClientError:
        """One call through one gateway: its answer, an Outcome, or the gateway's failure."""
        session = self._session
        assert session is not None
        try:
            async with asyncio.timeout(self.config.invoke_timeout or None):
                async with session.request(job.method, url, headers=headers, data=job.body,
                                           allow_redirects=False, timeout=_CALL_TIMEOUT) as resp:
                    body = await self._read_answer(resp)
                    if body is None:
                        limit = self.config.max_response
                        return Outcome(resp.status, "function", f"the function's answer is larger than {limit} bytes "
                                       "(--max-async-response)", permanent=True)
                    return Answer(resp.status, resp.headers.get("Content-Type"), body)
        except _NOT_CONNECTED as exc:  # before TimeoutError: a connect timeout is one too
            return exc
        except TimeoutError:
            return Outcome(0, "connection", f"no answer from the function within {self.config.invoke_timeout:g}s")
        except aiohttp.ClientError as exc:
            return exc

    async def _read_answer(self, resp: aiohttp.ClientResponse) -> bytes | None:
        """The function's whole answer, or None past ``max_response`` (held in this process's
        memory until the callback: a function that streams for ever must not grow it)."""
        limit = self.config.max_response
        if not limit:
            return await resp.read()
        if (resp.content_length or 0) > limit:
            return None
        body = bytearray()
        async for chunk in resp.content.iter_any():
            body += chunk
            if len(body) > limit:
                return None
        return bytes(body)

    async def _callback(self, job: Job, status: int, content_type: str | None, body: bytes, duration: float) -> str:
        """POST the result as OpenFaaS's queue-worker does; return an error, or "" once delivered.
        CallbackRefused: the policy does not allow the callback's address (it is not contacted)."""
        session = self._callback_session
        assert session is not None and job.callback_url
        self.callback_policy.check_url(job.callback_url)  # the client connects to an address without resolving it
        headers = {
            "X-Call-Id": job.call_id,
            "X-Function-Name": job.function,
            "X-Function-Status": str(status),
            "X-Duration-Seconds": f"{duration:.6f}",
            "X-Queue-Worker": self.callback_name,
        }
        if content_type:
            headers["Content-Type"] = content_type
        try:
            async with asyncio.timeout(self.config.callback_timeout or None):
                # Not following redirects: a 3xx is an answer (a failed callback), never a new address.
                async with session.post(job.callback_url, data=body, headers=headers, allow_redirects=False) as resp:
                    # Only its status counts: its body is not read (a receiver that answered
                    # without end grew the gateway by GiBs); the connection goes, not to the pool.
                    resp.close()
                    if 200 <= resp.status < 300:
                        return ""
                    return f"callback to {shown_callback(job.callback_url)} answered HTTP {resp.status}"
        except TimeoutError:
            return f"callback to {shown_callback(job.callback_url)} did not answer within {self.config.callback_timeout:g}s"
        except aiohttp.ClientError as exc:
            # An error's text may quote the URL whole: only its origin is shown.
            detail = scrub_callback(_describe(exc), job.callback_url)
            return f"callback to {shown_callback(job.callback_url)} failed: {detail}"


def _refused(status: int, url: str, exc: CallbackRefused) -> Outcome:
    """A callback the policy refuses: permanent, named by its origin only."""
    return Outcome(status, "callback", f"callback to {shown_callback(url)} refused: {scrub_callback(str(exc), url)}",
                   permanent=True)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
