"""The NATS JetStream queue, for several gateways and workers sharing the work.

Jobs go to a work-queue stream, one subject per function (``<prefix>.jobs.<function>``) with
one durable pull consumer each, so a busy function never holds back another one. A message
is acked only once the job is delivered; a worker that dies leaves it unacked, and JetStream
hands it out again after ``ack_wait`` (the lease). A failed attempt is published again with
its count raised and a not-before time, then the original is acked; dead-lettered jobs go to
a second stream with limits retention. The job's body is the message's data; everything else
travels in one header, as JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from ..errors import PayloadTooLarge
from .base import Deliver, FunctionSlots, JobQueue, Lease, QueueUnavailable, first_of
from .job import Job, JobInfo, QueueDepth

log = logging.getLogger("streamfaas.queue")
JOB_HEADER = "Streamfaas-Job"
_HEADER_OVERHEAD = 64  # "NATS/1.0\r\n", the header name, CRLFs
_MAX_HEADERS = 65_536  # what nats-server takes of a message's headers
# What a job may grow by when it is published again (a retry, a dead letter): its error, cut to
# _ERROR_CHARS, each as a JSON escape at worst, and its counters. Kept free at submit: a job that
# fitted only until its first failure could be neither retried nor dead-lettered, and ran again
# after every lease, for ever.
_ERROR_CHARS = 500
_ERROR_ROOM = 6 * _ERROR_CHARS + 200
_FIRST_CONNECT = 5.0  # seconds


def _job_of(headers: dict[str, str] | None, data: bytes | None) -> Job:
    meta = {k.lower(): v for k, v in (headers or {}).items()}.get(JOB_HEADER.lower())
    if meta is None:
        raise ValueError("message without a job header")
    return Job.from_meta(json.loads(meta), data or b"")


class NatsLease(Lease):
    def __init__(self, queue: NatsQueue, msg: Msg, job: Job) -> None:
        super().__init__(job)
        self._queue = queue
        self._msg = msg

    async def ack(self) -> None:
        await self._msg.ack_sync()

    async def retry(self, error: str, delay: float) -> None:
        # Published again before the ack: a crash in between runs the job twice, never zero times.
        await self._republish(self.job.failed_once_more(error[:_ERROR_CHARS], time.time() + delay), failed=False)

    async def dead_letter(self, error: str) -> None:
        await self._republish(self.job.failed_once_more(error[:_ERROR_CHARS], 0.0), failed=True)

    async def _republish(self, job: Job, *, failed: bool) -> None:
        try:
            await self._queue.publish(job, failed=failed)
        except PayloadTooLarge as exc:
            # Cannot happen to a job submitted here (room is kept for it); one that does anyway
            # is ended, not left to run again after every lease.
            log.error("queue: job %s (%s) ended: it no longer fits in a NATS message (%s)", job.call_id, job.function, exc)
            await self._msg.term()
            return
        await self._msg.ack_sync()

    async def release(self) -> None:
        await self._msg.nak()

    async def note(self, error: str) -> None:
        pass  # a leased message cannot change; the worker's log says why it is retried

    async def keep_alive(self) -> None:
        await self._msg.in_progress()


def redact_url(urls: str) -> str:
    """NATS URLs as they may be shown: ``nats://user:***@host:4222`` for each of a list, with or
    without a scheme (nats-py takes ``user:pass@host:4222``), a password holding a comma too."""
    joined: list[str] = []
    for piece in urls.split(","):  # a piece without "://" goes on from the one before
        if joined and "://" not in piece:
            joined[-1] += "," + piece
        else:
            joined.append(piece)
    shown = []
    for url in joined:
        head, at, host = url.strip().rpartition("@")
        if not at:
            shown.append(url.strip())
            continue
        scheme, sep, userinfo = head.partition("://")
        if not sep:
            scheme, userinfo = "", head
        user = userinfo.split(":", 1)[0] + ":" if ":" in userinfo else ""
        shown.append(f"{scheme}{sep}{user}***@{host}")
    return ",".join(shown)


def quiet_callbacks(what: str, shown_url: str, live: Callable[[], bool]) -> dict[str, Any]:
    """``nats.connect``'s error, disconnect and reconnect handlers: one log line each (an error
    once until it changes), where nats-py's own print a traceback at every failed reconnect.
    ``live``: whether the connection is still wanted (not closing)."""
    last = [""]

    async def on_error(exc: Exception) -> None:
        message = f"{exc.__class__.__name__}: {exc}".rstrip(": ")
        if live() and message != last[0]:
            log.warning("%s: NATS at %s: %s", what, shown_url, message)
        last[0] = message

    async def on_disconnected() -> None:
        if live():
            log.warning("%s: disconnected from NATS at %s; reconnecting", what, shown_url)

    async def on_reconnected() -> None:
        last[0] = ""
        log.warning("%s: reconnected to NATS at %s", what, shown_url)

    return {"error_cb": on_error, "disconnected_cb": on_disconnected, "reconnected_cb": on_reconnected}


def warn_if_open(nc: Client, shown_url: str) -> None:
    """One warning line when the NATS server asked for no credentials (its INFO's
    ``auth_required``): functions share the host's network, so any of them that reaches it could
    queue calls to any function, a private one included (the job runs with that function's
    token), and read the calls queued for others."""
    # nats-py keeps the server's INFO only in this private attribute; without it, the warning
    # errs on the side of being shown.
    info = getattr(nc, "_server_info", None) or {}
    if not info.get("auth_required"):
        log.warning("queue: NATS at %s asks for no credentials: anything that reaches it, a function included, can "
                    "queue calls to any function (private ones too) and read queued calls; start nats-server with "
                    "--user and --pass (or a token) and give them in NATS_URL", shown_url)


def _token(function: str) -> str:
    """A function's name as one NATS subject token and a consumer name: NAME.NAMESPACE holds a
    dot, NATS's separator (its jobs fell outside ``jobs.*``). A function name holds no "_"."""
    return function.replace(".", "_")


def _function(token: str) -> str:
    return token.replace("_", ".")

class NatsQueue(JobQueue):
    name = "nats"

    def __init__(self, url: str, *, stream: str = "STREAMFAAS_ASYNC", lease: float = 30.0, fetch_wait: float = 1.0,
                 discover_interval: float = 1.0, max_bytes: int = 0) -> None:
        self.url = url
        self.max_bytes = max_bytes  # jobs and dead letters together: a submit past it is refused
        self._held_bytes = 0  # in the streams, as last asked (plus what was stored since)
        self._held_at = -1e9
        self._publishing = 0  # bytes of submits being published now
        self._asking: asyncio.Future[None] | None = None
        self.shown_url = redact_url(url)  # for messages and logs: never a password
        self.stream = stream
        self.failed_stream = f"{stream}_FAILED"
        prefix = stream.lower()
        self.jobs_prefix = f"{prefix}.jobs"
        self.failed_prefix = f"{prefix}.failed"
        self.lease = lease
        self.fetch_wait = fetch_wait
        self.discover_interval = discover_interval
        self._nc: Client | None = None
        self._consumers: set[str] = set()
        self._new_consumer = asyncio.Event()
        self._creating: dict[str, asyncio.Future[None]] = {}

    @property
    def js(self) -> JetStreamContext:
        if self._nc is None:
            raise QueueUnavailable("the NATS queue is not connected")
        return self._nc.jetstream()

    async def start(self) -> None:
        servers = [u.strip() for u in self.url.split(",") if u.strip()]
        try:
            # Once connected, reconnect forever (a NATS restart must not stop the gateway), but
            # give up on the first connection soon: then the address is most likely wrong.
            async with asyncio.timeout(_FIRST_CONNECT):
                self._nc = await nats.connect(
                    servers, name="streamfaas", connect_timeout=2, max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5, allow_reconnect=True,
                    **quiet_callbacks("queue", self.shown_url, lambda: self._nc is not None),
                )
        except TimeoutError:
            raise QueueUnavailable(f"cannot connect to NATS at {self.shown_url} within {_FIRST_CONNECT:g}s") from None
        except (OSError, nats.errors.Error) as exc:
            raise QueueUnavailable(f"cannot connect to NATS at {self.shown_url}: {exc or exc.__class__.__name__}") from None
        warn_if_open(self._nc, self.shown_url)
        js = self.js
        try:
            await self._ensure_stream(js, self.stream, f"{self.jobs_prefix}.*", RetentionPolicy.WORK_QUEUE)
            await self._ensure_stream(js, self.failed_stream, f"{self.failed_prefix}.*", RetentionPolicy.LIMITS)
        except nats.errors.Error as exc:
            await self.close()
            raise QueueUnavailable(f"NATS at {self.shown_url}: cannot create stream {self.stream} (is JetStream on? `nats-server -js`): {exc}") from None

    @staticmethod
    async def _ensure_stream(js: JetStreamContext, name: str, subject: str, retention: RetentionPolicy) -> None:
        config = StreamConfig(name=name, subjects=[subject], retention=retention, storage=StorageType.FILE)
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            try:
                await nc.drain()
            except nats.errors.Error:
                await nc.close()

    def _consumer_name(self, function: str) -> str:
        return f"fn-{_token(function)}"

    async def _ensure_consumer(self, function: str) -> None:
        if function in self._consumers:
            return
        # Submits that arrive together for a new function wait for one creation.
        creating = self._creating.get(function)
        if creating is None:
            creating = self._creating[function] = asyncio.ensure_future(self._create_consumer(function))
            creating.add_done_callback(lambda _: self._creating.pop(function, None))
        await asyncio.shield(creating)

    async def _create_consumer(self, function: str) -> None:
        config = ConsumerConfig(
            durable_name=self._consumer_name(function),
            filter_subject=f"{self.jobs_prefix}.{_token(function)}",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.lease,
            max_deliver=-1,  # attempts are counted in the job itself; see NatsLease.retry
            max_ack_pending=100_000,
        )
        await self.js.add_consumer(self.stream, config)
        self._consumers.add(function)
        self._new_consumer.set()

    async def publish(self, job: Job, *, failed: bool = False) -> None:
        if self._nc is None:
            raise QueueUnavailable("the NATS queue is not connected")
        meta = job.meta_json()
        limit = self._nc.max_payload
        room = _ERROR_ROOM if job.attempts == 0 and not failed else 0  # a new job: room to fail in
        if len(job.body) + len(meta) + _HEADER_OVERHEAD + room > limit:
            raise PayloadTooLarge(
                f"request too large for NATS: body and headers must stay under the server's max_payload ({limit} bytes)"
            )
        if len(meta) + _HEADER_OVERHEAD + room > _MAX_HEADERS:
            raise PayloadTooLarge(f"request headers too large for NATS: they must stay under {_MAX_HEADERS // 1024} KiB")
        prefix = self.failed_prefix if failed else self.jobs_prefix
        stream = self.failed_stream if failed else self.stream
        try:
            if not failed:
                await self._ensure_consumer(job.function)
            await self.js.publish(f"{prefix}.{_token(job.function)}", job.body, stream=stream, headers={JOB_HEADER: meta})
        except nats.errors.Error as exc:
            # The address (and user) for the log; a caller of /async-function is told less.
            log.warning("queue: NATS at %s did not store job %s: %s", self.shown_url, job.call_id, exc or exc.__class__.__name__)
            raise QueueUnavailable(f"the queue did not store the job: {exc or exc.__class__.__name__}") from None

    async def submit(self, job: Job) -> None:
        size = len(job.body)
        if self.max_bytes:
            # Not the streams' own max_bytes: it reserves that storage in the server up front,
            # and a full jobs stream would refuse a retry's own publish.
            await self._refresh_held()
            if self._held_bytes + self._publishing + size > self.max_bytes:
                raise QueueUnavailable(
                    f"the queue is full (--queue-max-bytes {self.max_bytes}): try again later, "
                    "or purge its dead letters (`streamfaas queue purge --failed`)"
                )
        self._publishing += size  # no await since the check: concurrent submits see each other
        try:
            await self.publish(job)
        finally:
            self._publishing -= size
        self._held_bytes += size  # stored: counted as the server will, until the next look

    async def _refresh_held(self) -> None:
        """What the jobs and dead-letter streams hold, asked of the server at most once a second
        (one question at a time, however many submits wait for it)."""
        if time.monotonic() - self._held_at <= 1.0:
            return
        if self._asking is None:
            self._asking = asyncio.ensure_future(self._ask_held())
        try:
            await asyncio.shield(self._asking)
        finally:
            if self._asking is not None and self._asking.done():
                self._asking = None

    async def _ask_held(self) -> None:
        try:
            infos = [await self.js.stream_info(name) for name in (self.stream, self.failed_stream)]
        except nats.errors.Error as exc:
            log.warning("queue: NATS at %s did not answer: %s", self.shown_url, exc or exc.__class__.__name__)
            raise QueueUnavailable(f"the queue did not answer: {exc or exc.__class__.__name__}") from None
        self._held_bytes = sum(info.state.bytes for info in infos)
        self._held_at = time.monotonic()

    # ---- workers ----
    async def _functions(self) -> list[str]:
        infos = await self.js.consumers_info(self.stream)
        return [_function(i.name.removeprefix("fn-")) for i in infos if i.name and i.name.startswith("fn-")]

    async def consume(self, slots: FunctionSlots, deliver: Deliver, stop: asyncio.Event) -> None:
        started: set[str] = set()
        async with asyncio.TaskGroup() as tg:
            while not stop.is_set():
                self._new_consumer.clear()
                try:
                    functions = set(await self._functions()) | self._consumers
                except (nats.errors.Error, QueueUnavailable) as exc:
                    log.warning("queue: cannot list NATS consumers: %s", exc)
                    functions = set()
                for fn in functions - started:
                    started.add(fn)
                    # One lingering pull per slot: each returns as soon as a job is there.
                    for _ in range(slots.per_function):
                        tg.create_task(self._fetch_loop(fn, slots, deliver, stop))
                await first_of((self._new_consumer, stop), self.discover_interval)

    async def _fetch_loop(self, function: str, slots: FunctionSlots, deliver: Deliver, stop: asyncio.Event) -> None:
        sub: JetStreamContext.PullSubscription | None = None
        try:
            while not stop.is_set():
                if sub is None:
                    try:
                        sub = await self.js.pull_subscribe_bind(durable=self._consumer_name(function), stream=self.stream)
                    except (nats.errors.Error, QueueUnavailable) as exc:
                        log.warning("queue: cannot pull %s's jobs: %s", function, exc)
                        await first_of((stop,), self.fetch_wait)
                        continue
                if not await slots.reserve(function, 1, stop):
                    break
                msg = await self._fetch_one(sub, stop)
                if msg is None:
                    slots.give(function)
                    continue
                await self._hand_over(msg, function, slots, deliver, stop)
        finally:
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except nats.errors.Error:
                    pass

    async def _fetch_one(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> Msg | None:
        try:
            msgs = await sub.fetch(1, timeout=self.fetch_wait)
        except (TimeoutError, nats.errors.TimeoutError, nats.js.errors.FetchTimeoutError):
            return None
        except nats.errors.Error as exc:
            log.warning("queue: NATS fetch failed: %s", exc)
            await first_of((stop,), self.fetch_wait)
            return None
        return msgs[0] if msgs else None

    async def _hand_over(self, msg: Msg, function: str, slots: FunctionSlots, deliver: Deliver, stop: asyncio.Event) -> None:
        try:
            job = _job_of(msg.headers, msg.data)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("queue: dropping a malformed message on %s: %s", msg.subject, exc)
            await msg.term()
            slots.give(function)
            return
        if job.function != function:
            # Only the gateway publishes jobs, each on its function's subject; one that names
            # another function was put there by someone else (a function, on a NATS server without
            # credentials, to run a private function with its token).
            log.error("queue: dropping job %s on %s: it names function %r", job.call_id, msg.subject, job.function)
            await msg.term()
            slots.give(function)
            return
        wait = job.not_before - time.time()
        if stop.is_set() or wait > 0:
            # Fetched while stopping, or still backing off: back to the stream, not counted.
            await msg.nak(delay=wait if wait > 0 else None)
            slots.give(function)
            return
        deliver(NatsLease(self, msg, job))

    # ---- the REST API's view ----
    async def depth(self) -> QueueDepth:
        try:
            jobs = await self.js.stream_info(self.stream)
            failed = await self.js.stream_info(self.failed_stream)
        except nats.errors.Error as exc:
            raise QueueUnavailable(f"NATS at {self.shown_url}: {exc}") from None
        return QueueDepth(pending=jobs.state.messages, failed=failed.state.messages)

    async def _scan(self, failed: bool, limit: int) -> list[tuple[int, Job]]:
        stream = self.failed_stream if failed else self.stream
        subject = f"{self.failed_prefix if failed else self.jobs_prefix}.*"
        out: list[tuple[int, Job]] = []
        seq = 1
        while len(out) < limit:
            try:
                raw = await self.js.get_msg(stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            except nats.errors.Error as exc:
                raise QueueUnavailable(f"NATS at {self.shown_url}: {exc}") from None
            assert raw.seq is not None
            seq = raw.seq + 1
            try:
                out.append((raw.seq, _job_of(raw.headers, raw.data)))
            except (ValueError, KeyError, TypeError):
                continue
        return out

    async def list_jobs(self, *, failed: bool, limit: int) -> list[JobInfo]:
        state = "failed" if failed else "pending"
        return [JobInfo.of(job, state) for _, job in await self._scan(failed, limit)]

    async def retry_failed(self, call_id: str | None) -> int:
        count = 0
        for seq, job in await self._scan(True, 1_000_000):
            if call_id is not None and job.call_id != call_id:
                continue
            await self.publish(Job.from_meta({**job.meta(), "attempts": 0, "notBefore": 0.0}, job.body))
            await self.js.delete_msg(self.failed_stream, seq)
            count += 1
        return count

    async def purge(self, *, failed: bool) -> int:
        stream = self.failed_stream if failed else self.stream
        try:
            before = (await self.js.stream_info(stream)).state.messages
            await self.js.purge_stream(stream)
        except nats.errors.Error as exc:
            raise QueueUnavailable(f"NATS at {self.shown_url}: {exc}") from None
        return before
