"""Resumable streams across gateways: with the NATS queue, every journalled stream is also
written to JetStream, so that a client can resume on any gateway (issue 14).

One JetStream stream (``<queue stream>_SSE``, limits retention: a max age and a max size, the
oldest messages dropped first) holds one subject per stream, ``<prefix>.sse.<SID>``: a head
message (the function, the response head, the window), then one message per chunk (its offset
and the ids of the events it ends), then an end message. A gateway that is asked to resume a
stream it does not hold reads that subject from the start into a local copy and serves the
client from it, the live tail included.

The function runs on its first gateway only. While a client reads a stream on another gateway,
that gateway says so every few seconds on ``<prefix>.ssectl.<SID>`` (core NATS), and the first
gateway counts it as a reader, so the function is not stopped after its ``resume_grace``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import nats
import nats.errors
import nats.js.errors
from multidict import CIMultiDict
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from ..queue.jetstream import quiet_callbacks, redact_url
from .journal import Head, Journal, JournalGone, Stream, is_stream_id

log = logging.getLogger("streamfaas.journal")
KIND = "Sf-Kind"
_CONNECT = 5.0
JETSTREAM_JOURNAL_AGE = 3600.0  # seconds: a stream resumes on another gateway within an hour at most
_CATCH_UP = 10.0  # seconds to read a stream's journal so far, before giving up on a resume


class _Copy:
    """How far this gateway's copy of another gateway's stream has read JetStream."""

    __slots__ = ("seq", "moved", "closed")

    def __init__(self) -> None:
        self.seq = 0  # the JetStream sequence of the last message copied
        self.moved = asyncio.Event()
        self.closed = False

    def advance(self, seq: int) -> None:
        self.seq = seq
        moved, self.moved = self.moved, asyncio.Event()
        moved.set()

    def close(self) -> None:
        self.closed = True
        self.moved.set()


class JetStreamJournal:
    """Mirrors a gateway's journalled streams into JetStream and reads other gateways' back."""

    def __init__(self, journal: Journal, url: str, queue_stream: str, *, max_age: float, max_bytes: int) -> None:
        self.journal = journal
        self.url = url
        self.stream = f"{queue_stream}_SSE"
        prefix = queue_stream.lower()
        self.subjects = f"{prefix}.sse"
        self.control = f"{prefix}.ssectl"
        self.max_age = max_age
        self.max_bytes = max_bytes
        self._nc: Client | None = None
        self._control_sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._copies: dict[str, _Copy] = {}  # streams being copied from JetStream, by id

    async def start(self) -> None:
        servers = [u.strip() for u in self.url.split(",") if u.strip()]
        try:
            async with asyncio.timeout(_CONNECT):
                self._nc = await nats.connect(servers, name="streamfaas-journal", connect_timeout=2,
                                              max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                              **quiet_callbacks("journal", redact_url(self.url), lambda: self._nc is not None))
            js = self._nc.jetstream()
            config = StreamConfig(
                name=self.stream, subjects=[f"{self.subjects}.*"], retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE, max_age=self.max_age, max_bytes=self.max_bytes, discard=DiscardPolicy.OLD,
            )
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await js.update_stream(config)
            self._control_sub = await self._nc.subscribe(f"{self.control}.*", cb=self._on_control)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            # Resuming on another gateway is lost, not the stream: the local journal works on.
            log.warning("journal: no JetStream journal at %s (%s); streams resume on their own gateway only",
                        redact_url(self.url), exc or exc.__class__.__name__)
            await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(nats.errors.Error):
                await nc.drain()

    # ---- the first gateway: write --------------------------------------------------------
    async def opened(self, stream: Stream) -> None:
        head = {"function": stream.function, "status": stream.head.status, "reason": stream.head.reason,
                "headers": list(stream.head.headers.items()), "window": stream.window, "max_bytes": stream.max_bytes, "grace": stream.grace}
        await self._publish(stream.sid, b"", {KIND: "head", "Sf-Head": json.dumps(head)})

    async def appended(self, stream: Stream, offset: int, data: bytes) -> None:
        await self._publish(stream.sid, data, {KIND: "data", "Sf-Offset": str(offset)})

    async def finished(self, stream: Stream) -> None:
        await self._publish(stream.sid, b"", {KIND: "end", "Sf-Outcome": stream.outcome, "Sf-Time": str(time.time())})

    async def _publish(self, sid: str, data: bytes, headers: dict[str, str]) -> None:
        if self._nc is None or self._nc.is_closed:
            return
        try:
            # Core publish, not a JetStream one: no ack awaited per chunk; one connection keeps
            # the order, and the stream captures the subject.
            await self._nc.publish(f"{self.subjects}.{sid}", data, headers=headers)
        except nats.errors.Error as exc:
            log.warning("journal: cannot write to JetStream: %s", exc)

    def _on_control_msg(self, msg: Msg) -> None:
        sid = msg.subject.rpartition(".")[2]
        stream = self.journal.streams.get(sid)
        if stream is not None and not stream.done:
            stream.seen_remotely()

    async def _on_control(self, msg: Msg) -> None:
        self._on_control_msg(msg)

    # ---- another gateway: read ---------------------------------------------------------------
    async def adopt(self, function: str, sid: str, event_id: str) -> Stream:
        """A local copy of stream ``sid`` from JetStream, read at least up to ``event_id``'s end
        (or its end); ``JournalGone`` when JetStream holds no such stream of ``function``."""
        if self._nc is None or not is_stream_id(sid):  # a subject token: never a wildcard
            raise JournalGone("unknown", f"no stream {sid!r} of function {function!r} is kept")
        js = self._nc.jetstream()
        subject = f"{self.subjects}.{sid}"
        try:
            last = await js.get_last_msg(self.stream, subject)
        except nats.js.errors.NotFoundError:
            raise JournalGone("unknown", f"no stream {sid!r} of function {function!r} is kept (unknown, or past "
                              "its resume_window)") from None
        except nats.errors.Error as exc:
            raise JournalGone("unknown", f"stream {sid!r} cannot be looked up in JetStream now ({exc.__class__.__name__})") from None
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        try:
            try:
                first = await sub.next_msg(timeout=_CATCH_UP)
            except nats.errors.Error:
                raise JournalGone("unknown", f"stream {sid!r} could not be read back in time") from None
            head = _head(first)
            if head is None or head.get("function") != function:
                raise JournalGone("unknown", f"no stream {sid!r} of function {function!r} is kept")
            copied = self.journal.streams.get(sid)
            joined = copied if copied is not None and copied.function == function else None
            if joined is not None:
                # Another resume copied it while this one looked it up: one copy, read by both
                # (a second would be counted in the journal and never given back).
                await sub.unsubscribe()
        except BaseException:
            await sub.unsubscribe()
            raise
        if joined is not None:
            await self._reach(joined, self._copies.get(sid), last.seq or 0)
            return joined
        try:
            stream = self.journal.adopt(function, sid, Head(head["status"], head["reason"], CIMultiDict(head["headers"])),
                                        max_bytes=int(head["max_bytes"]), window=float(head["window"]),
                                        grace=float(head.get("grace", 30.0)))
            copy = self._copies[sid] = _Copy()
            task = asyncio.get_running_loop().create_task(self._copy(sub, stream, copy))
        except BaseException:
            await sub.unsubscribe()
            raise
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await self._reach(stream, copy, last.seq or 0)
        except JournalGone:
            task.cancel()
            self.journal.forget(stream)
            raise
        if stream.done and stream.outcome_time + stream.window < time.time():
            self.journal.forget(stream)
            raise JournalGone("unknown", f"stream {sid!r} ended more than its resume_window ago")
        return stream

    async def caught_up(self, stream: Stream) -> None:
        """Return once this gateway's copy of ``stream`` holds what JetStream holds of it now;
        at once for a stream that is not being copied. Another client's resume may have begun
        the copy a moment ago, and it may not have reached this client's event yet: without
        this wait, that event was not found (404)."""
        copy = self._copies.get(stream.sid)
        if copy is None or stream.done or self._nc is None:
            return
        try:
            last = await self._nc.jetstream().get_last_msg(self.stream, f"{self.subjects}.{stream.sid}")
        except nats.errors.Error:
            return  # nothing newer to wait for; the copy so far answers
        await self._reach(stream, copy, last.seq or 0)

    async def _reach(self, stream: Stream, copy: _Copy | None, seq: int) -> None:
        """Wait until ``copy`` has read JetStream up to ``seq`` (or the stream ended, or the copy stopped)."""
        if copy is None:
            return
        try:
            async with asyncio.timeout(_CATCH_UP):
                while copy.seq < seq and not stream.done and not copy.closed:
                    await copy.moved.wait()
        except TimeoutError:
            raise JournalGone("unknown", f"stream {stream.sid!r} could not be read back in time") from None

    async def _copy(self, sub: Subscription, stream: Stream, copy: _Copy) -> None:
        keepalive = asyncio.get_running_loop().create_task(self._say_reading(stream))
        try:
            while not stream.done:
                msg = await sub.next_msg(timeout=None)
                kind = (msg.headers or {}).get(KIND)
                if kind == "data":
                    offset = int((msg.headers or {}).get("Sf-Offset", "0"))
                    if offset == stream.end:  # in order, nothing missing
                        await stream.deliver(msg.data)
                elif kind == "end":
                    stream.outcome_time = float((msg.headers or {}).get("Sf-Time", "0"))
                    stream.finish((msg.headers or {}).get("Sf-Outcome", "complete"))
                copy.advance(msg.metadata.sequence.stream)
        except (nats.errors.Error, ValueError) as exc:
            log.warning("journal: reading stream %s back from JetStream failed: %s", stream.sid, exc)
            if not stream.done:
                stream.finish("function")
        finally:
            if self._copies.get(stream.sid) is copy:
                del self._copies[stream.sid]
            copy.close()
            keepalive.cancel()
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _say_reading(self, stream: Stream) -> None:
        """While this gateway has readers on the stream, tell its first gateway, often enough
        for the function's ``resume_grace``."""
        every = max(0.2, stream.grace / 3)
        while not stream.done:
            if stream.readers and self._nc is not None:
                with contextlib.suppress(nats.errors.Error):
                    await self._nc.publish(f"{self.control}.{stream.sid}", b"")
            await asyncio.sleep(every)


def _head(msg: Msg) -> dict[str, Any] | None:
    headers = msg.headers or {}
    if headers.get(KIND) != "head":
        return None
    try:
        head = json.loads(headers.get("Sf-Head", ""))
    except ValueError:
        return None
    return head if isinstance(head, dict) else None
