"""Resumable event streams: each event gets an id, and a stream's bytes are kept in a journal
so that a client that reconnects with ``Last-Event-ID`` gets what it missed, then the live tail,
without the function running again (issue 14).

A journalled stream is read from its function by one task (the *pump*), not by the request
that started it: the client's request only reads the journal, so the function runs on when
that client goes away, for the function's ``resume_grace``, and a resuming request reads the
same journal from where its client left off. A finished stream stays for ``resume_window``.

Offsets: a stream is one run of bytes as its clients get them (ids added, the ``retry:`` hint
in front); each event's id is paired with the offset just past its blank line, and a resume
from that id starts there. Memory is bounded per stream (``resume_max_bytes``) and per gateway
(``--resume-journal-bytes``): the oldest bytes go first, and an id whose event went with them
can no longer be resumed from (a 404 that says so).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from multidict import CIMultiDict

if TYPE_CHECKING:
    from .journal_nats import JetStreamJournal

# Where an event ends: its last line's end, then an empty line (LF or CRLF streams).
_LF_END = b"\n\n"
_CRLF_END = b"\r\n\r\n"
_BLANK_LINES = (_LF_END, _CRLF_END, b"\n\r\n", b"\r\n\n")


@dataclass(frozen=True)
class Head:
    """The response head every client of a stream gets, the resuming ones too."""

    status: int
    reason: str | None
    headers: CIMultiDict[str]


class EventIds:
    """Gives each event of a byte stream an id, passing every byte on as it comes.

    An event that carries its own ``id:`` keeps it; any other gets ``id: SID:N`` as its last
    line, written just before the blank line that ends it (so a client has the id exactly when
    it has the whole event). Only the current event's bytes are held, to look for a line
    ``id:`` and for an end split across two chunks.
    """

    __slots__ = ("sid", "seq", "_event", "_sent")

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.seq = 0
        self._event = bytearray()  # the current event, from its start
        self._sent = 0  # how much of it was passed on already

    @property
    def held(self) -> int:
        """Bytes of the event in progress held here (a function that never ends its event
        makes this grow: whoever feeds bounds it)."""
        return len(self._event)

    def end_event(self) -> bytes:
        """What ends the event in progress, if one is: before a last event of the gateway's own."""
        if not self._event:
            return b""
        return b"\n" if self._event.endswith(b"\n") else b"\n\n"  # after a lone CR, an LF pairs with it

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send for ``chunk``: the same, with an id line at each event end."""
        event = self._event
        event += chunk
        out = bytearray()
        while True:
            lf = event.find(_LF_END, max(0, self._sent - 1))
            crlf = event.find(_CRLF_END, max(0, self._sent - 3))
            if lf < 0 and crlf < 0:
                break
            if crlf >= 0 and (lf < 0 or crlf < lf):
                body_end, blank_end = crlf + 2, crlf + 4  # the id goes after the last line's CRLF
            else:
                body_end, blank_end = lf + 1, lf + 2
            self.seq += 1
            own = event.startswith(b"id") or event.find(b"\nid", 0, body_end) >= 0 or event.find(b"\rid", 0, body_end) >= 0
            if self._sent <= body_end:
                out += event[self._sent:body_end]
                if not own or _own_id(bytes(event[:body_end])) is None:
                    out += b"id: %s:%d\n" % (self.sid.encode(), self.seq)
                out += event[body_end:blank_end]
            else:
                # Not reached by LF or CRLF streams (a trailing CR is held back): the id's place
                # went out with the previous chunk, so this event keeps whatever id it had.
                out += event[self._sent:blank_end]
            del event[:blank_end]
            self._sent = 0
        # A trailing CR waits for the next chunk: it may be the first half of a CRLF blank line,
        # in front of which the id must go. (A client cannot act on it before the LF either.)
        held = len(event) - 1 if event.endswith(b"\r") else len(event)
        out += event[self._sent:held]
        self._sent = held
        return bytes(out)

    def flush(self) -> bytes:
        """What is still held back (a trailing CR), once the stream has ended."""
        rest = bytes(self._event[self._sent:])
        self._sent = len(self._event)
        return rest


def _own_id(event: bytes) -> str | None:
    """The value of the event's last ``id`` line, if it has one."""
    found = None
    for line in event.splitlines():
        if line == b"id" or line.startswith(b"id:"):
            value = line[3:]
            found = (value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace")
    return found


def event_end(data: bytes, event_id: str) -> int:
    """The offset just past the event whose id is ``event_id`` (its last such line wins), or -1
    when ``data`` holds no whole event with that id. Looked up only when a client resumes, so
    the journal keeps no index per event."""
    value = event_id.encode()
    for line in (b"id: " + value, b"id:" + value):
        at = len(data)
        while (at := data.rfind(line, 0, at)) >= 0:
            after = at + len(line)
            if (at == 0 or data[at - 1] in b"\r\n") and data[after:after + 1] in (b"\n", b"\r"):
                # Line ends may mix: the id line the gateway adds ends in LF in a CRLF stream.
                found = [(i, len(end)) for end in _BLANK_LINES if (i := data.find(end, after)) >= 0]
                return min(found)[0] + min(found)[1] if found else -1
            at -= 1
            if at < 0:
                break
    return -1


class JournalGone(LookupError):
    """A resume that cannot be served: ``reason`` is ``unknown`` (never
    seen, or past its window) or ``dropped`` (over the journal's bounds)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Reader:
    """One client of a stream: how far it has read, and, while it waits with nothing left to
    read, how the stream's writer may hand it a new chunk itself (one task switch less per
    event: ``write`` returns False once the client is gone; ``sent`` counts what went out)."""

    __slots__ = ("offset", "write", "sent", "waiter", "broken")

    def __init__(self, offset: int, write: Callable[[bytes], Awaitable[bool]] | None = None,
                 sent: Callable[[bytes], None] | None = None) -> None:
        self.offset = offset
        self.write = write
        self.sent = sent
        self.waiter: asyncio.Future[None] | None = None
        self.broken = False


class Stream:
    """One journalled stream: its head, and its bytes as its clients get them (the oldest may
    be gone). Nothing is kept per event: an id is looked up in the bytes when a client resumes."""

    def __init__(self, journal: Journal, function: str, sid: str, head: Head, max_bytes: int, window: float,
                 grace: float) -> None:
        self.journal = journal
        self.function = function
        self.sid = sid
        self.head = head
        self.max_bytes = max_bytes
        self.window = window
        self.grace = grace
        self.chunks: deque[bytes] = deque()
        self.base = 0  # the offset of chunks[0]
        self.end = 0  # the offset past the last byte
        self.done = False
        self.outcome = ""
        self.outcome_time = 0.0  # when it ended (Unix seconds)
        self.clients: set[Reader] = set()  # the readers attached here
        self._room: asyncio.Future[None] | None = None  # the pump, waiting for a slow reader
        self.remote_seen = -1e9  # when a reader on another gateway last said it was there
        self.on_abandon: Callable[[], None] | None = None  # stops the function (no reader left)
        self._timer: asyncio.TimerHandle | None = None
        self.overhead = 0  # counted in the journal's size besides the bytes (Journal.adopt)

    # ---- written by the pump ------------------------------------------------------------
    def append(self, data: bytes) -> None:
        """Keep ``data`` and wake every reader waiting for it."""
        self._store(data)
        self._wake()

    async def deliver(self, data: bytes) -> None:
        """Keep ``data``, and write it to each client that was waiting for exactly it; wake the
        others (behind, or without a writer) to read it themselves."""
        start = self.end
        self._store(data)
        direct = []
        for reader in self.clients:
            waiter = reader.waiter
            if waiter is None or waiter.done():
                continue
            if reader.write is not None and reader.offset == start and data:
                direct.append(reader)
            else:
                waiter.set_result(None)
        for reader in direct:
            write = reader.write
            assert write is not None
            if reader in self.clients and await write(data):
                reader.offset += len(data)
                if reader.sent is not None:
                    reader.sent(data)
            else:
                reader.broken = True
                if reader.waiter is not None and not reader.waiter.done():
                    reader.waiter.set_result(None)
        if direct:
            self._advanced()

    def _store(self, data: bytes) -> None:
        if data:
            self.chunks.append(data)
            self.end += len(data)
            self.journal.grew(len(data))
            self.trim(self.max_bytes, keep_unread=True)

    def finish(self, outcome: str) -> None:
        self.done = True
        self.outcome = outcome
        self.outcome_time = self.outcome_time or time.time()
        self._wake()
        self._arm(self.window, self._expire)

    # ---- read by clients -------------------------------------------------------------------
    def kept(self) -> bytes:
        return b"".join(self.chunks)

    def offset_after(self, event_id: str) -> int:
        """Where a client that last had ``event_id`` goes on; ``JournalGone`` if nowhere."""
        end = event_end(self.kept(), event_id)
        if end >= 0:
            return self.base + end
        if self.base > 0:
            raise JournalGone("dropped", f"event {event_id!r} is no longer kept: the journal of stream {self.sid} "
                              f"keeps its last {self.max_bytes} bytes")
        raise JournalGone("unknown", f"stream {self.sid} has no event {event_id!r}")

    async def read(self, reader: Reader) -> bytes:
        """The bytes from ``reader``'s offset on, waiting for some (the writer may deliver them
        meanwhile); b"" once the stream is done, or the client is gone."""
        while reader.offset >= self.end and not reader.broken:
            if self.done:
                return b""
            # A future of its own: a reader cancelled while waiting (its client went away)
            # cancels only that one.
            reader.waiter = asyncio.get_running_loop().create_future()
            try:
                await reader.waiter
            finally:
                reader.waiter = None
        if reader.broken:
            return b""
        offset = reader.offset
        if offset < self.base:
            raise JournalGone("dropped", "this client fell behind the stream's journal, whose oldest bytes were dropped")
        last = self.chunks[-1]
        if offset == self.end - len(last):  # a live client: the chunk just added
            return last
        # From the newest chunk back: a resuming client gets all it missed at once.
        at = self.end
        parts = []
        for chunk in reversed(self.chunks):
            at -= len(chunk)
            if at <= offset:
                parts.append(chunk[offset - at:] if offset > at else chunk)
                break
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(reversed(parts))

    @property
    def readers(self) -> int:
        """Clients reading this stream on this gateway now."""
        return len(self.clients)

    def attach(self, reader: Reader) -> None:
        self.clients.add(reader)
        if not self.done:
            self._disarm()

    def advanced(self, reader: Reader, nbytes: int) -> None:
        """``reader`` sent its client ``nbytes`` more."""
        reader.offset += nbytes
        self._advanced()

    def _advanced(self) -> None:
        # What a client here had not read was kept past the limit (a chunk bigger than the
        # journal, or one stored while a client lagged); once read, or the client gone, it goes.
        # Stores trim too, but a stream whose last chunk is in would otherwise stay over it.
        if self.end - self.base > self.max_bytes:
            self.trim(self.max_bytes, keep_unread=True)
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    def full(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more would drop bytes a client here has not read yet."""
        return bool(self.clients) and min(r.offset for r in self.clients) < min(self.end, self.end + nbytes - self.max_bytes)

    async def room(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more can be kept without dropping what a client reading this
        stream has not read yet: a slow client holds the function back, as it holds back a plain
        stream (TCP back pressure). A chunk bigger than the whole journal waits for every
        client to have read everything before it."""
        while self.full(nbytes):
            if self._room is None or self._room.done():
                self._room = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._room)

    def detach(self, reader: Reader) -> None:
        self.clients.discard(reader)
        self._advanced()
        if not self.clients and not self.done:
            self._arm(self.grace, self._abandon_if_alone)

    def seen_remotely(self) -> None:
        """A reader on another gateway is on this stream (JetStream journals)."""
        self.remote_seen = asyncio.get_running_loop().time()

    # ---- internals ---------------------------------------------------------------------------
    def trim(self, limit: int, *, keep_unread: bool = False) -> None:
        """Drop the oldest bytes until at most ``limit`` are kept (a chunk may be cut: one read
        from the function can hold many events); with ``keep_unread``, none that a client here
        has not read yet (one chunk bigger than the journal is kept whole until read)."""
        excess = self.end - self.base - limit
        if keep_unread and self.clients:
            excess = min(excess, min(r.offset for r in self.clients) - self.base)
        if excess <= 0:
            return
        self.journal.size -= excess
        self.base += excess
        while excess:
            first = self.chunks[0]
            if len(first) <= excess:
                self.chunks.popleft()
                excess -= len(first)
            else:
                self.chunks[0] = first[excess:]
                excess = 0

    def _wake(self) -> None:
        for reader in self.clients:
            if reader.waiter is not None and not reader.waiter.done():
                reader.waiter.set_result(None)

    def _arm(self, delay: float, then: Callable[[], None]) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(delay, then)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _abandon_if_alone(self) -> None:
        self._timer = None
        if self.readers or self.done:
            return
        wait = self.remote_seen + self.grace - asyncio.get_running_loop().time()
        if wait > 0:
            self._arm(wait, self._abandon_if_alone)
            return
        if self.on_abandon is not None:
            self.on_abandon()

    def _expire(self) -> None:
        self._timer = None
        if self.readers:  # a client still reading the tail: expire once it is done
            self._arm(1.0, self._expire)
            return
        self.journal.forget(self)


# A stream's objects (Stream, its timer, the pump's task and upstream response), measured at
# ≈ 4.8 KiB a stream with a small head (tenth session).
STREAM_OVERHEAD = 4096


class Journal:
    """A gateway's journalled streams, by stream id, within ``max_bytes`` in all."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        # Bytes of events still in progress, held by the pumps until their blank line: not in
        # ``size`` (no event is journalled yet), but bounded by ``max_bytes`` too, all together.
        self.partial = 0
        self.streams: OrderedDict[str, Stream] = OrderedDict()  # oldest first
        self.pumps: set[asyncio.Task[None]] = set()  # one per stream whose function still runs
        self.mirror: JetStreamJournal | None = None  # with the NATS queue: other gateways' streams

    def open(self, function: str, head: Head, *, max_bytes: int, window: float, grace: float) -> Stream:
        sid = secrets.token_urlsafe(12)  # 96 random bits: knowing it is what lets a client resume
        return self.adopt(function, sid, head, max_bytes=max_bytes, window=window, grace=grace)

    def adopt(self, function: str, sid: str, head: Head, *, max_bytes: int, window: float, grace: float) -> Stream:
        """A stream under a given id: a new one, or a local copy of another gateway's."""
        if sid in self.streams:  # two resumes of another gateway's stream at once: one copy (JetStreamJournal.adopt)
            raise ValueError(f"stream {sid!r} is kept here already")
        stream = self.streams[sid] = Stream(self, function, sid, head, max_bytes, window, grace)
        # What a stream holds besides its bytes counts against the journal too: its head (a
        # function may send 60 KiB of headers) and its objects. Else streams of no bytes, kept
        # for resume_window, grew the gateway past --resume-journal-bytes (4.8-111 KiB a call).
        stream.overhead = STREAM_OVERHEAD + len(head.reason or "") + sum(len(k) + len(v) for k, v in head.headers.items())
        self.grew(stream.overhead)
        return stream

    def find(self, function: str, sid: str, event_id: str) -> Stream:
        """The stream ``sid`` of ``function``. Its random id is what lets a client resume, so an
        event id without one (a function's own ids) finds nothing: looking for the stream that
        sent it would hand one caller's stream to anyone who can guess an id such as "0"."""
        if not sid:
            raise JournalGone(
                "unknown",
                "this Last-Event-ID names no stream: a function's own event ids resume only "
                "with the X-Stream-Id header of the first response",
            )
        stream = self.streams.get(sid)
        if stream is not None and stream.function == function:
            return stream
        raise JournalGone("unknown", f"no stream {sid!r} of function {function!r} is kept (unknown, or past its resume_window)")

    def grew(self, nbytes: int) -> None:
        self.size += nbytes
        if self.size <= self.max_bytes:
            return
        for other in list(self.streams.values()):  # the oldest streams give up their bytes first
            other.trim(max(0, other.end - other.base - (self.size - self.max_bytes)))
            if other.done and other.end == other.base and not other.readers:
                self.forget(other)
            if self.size <= self.max_bytes:
                return

    def forget(self, stream: Stream) -> None:
        if self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
            self.size -= stream.end - stream.base + stream.overhead
            stream.chunks.clear()
            stream.base = stream.end
            stream._disarm()

    async def close(self) -> None:
        """Stop every function still streaming into the journal, and forget every stream."""
        for task in self.pumps:
            task.cancel()
        await asyncio.gather(*self.pumps, return_exceptions=True)
        if self.mirror is not None:
            await self.mirror.close()
        for stream in list(self.streams.values()):
            self.forget(stream)


# What ``Journal.open`` makes (``secrets.token_urlsafe(12)``). Nothing else is taken as a stream
# id: one names a JetStream subject, where ".", "*" and ">" would reach other streams.
_STREAM_ID = re.compile(r"[A-Za-z0-9_-]{16}")


def is_stream_id(text: str) -> bool:
    return _STREAM_ID.fullmatch(text) is not None


def split_event_id(last_event_id: str) -> tuple[str, str]:
    """``(stream id, event id)`` from a ``Last-Event-ID`` the gateway gave (``SID:N``); a
    function's own id names no stream: ``("", id)``."""
    sid, colon, seq = last_event_id.rpartition(":")
    if colon and is_stream_id(sid) and seq.isascii() and seq.isdigit():
        return sid, last_event_id
    return "", last_event_id
