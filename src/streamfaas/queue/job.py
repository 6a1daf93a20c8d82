"""One async invocation as the queue stores it, and the summaries the REST API lists."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, unquote

from yarl import URL

from .callbacks import listed_callback

# Never stored: a queued job must not carry the caller's credentials to disk or to NATS.
AUTH_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_DOT_SEGMENTS = frozenset({".", ".."})


def check_path(path: str) -> str:
    """``path`` (what followed ``/async-function/NAME``, still percent-encoded) if it stays below
    the function: "" or starting with "/", with no "." or ".." segment however it is encoded
    (``%2e``, ``%2F``-separated, encoded twice). Else ValueError."""
    if path and not path.startswith("/"):
        raise ValueError(f"the path must start with '/': {path!r}")
    decoded = path
    while True:
        # A "/" or "\" that decoding reveals separates segments too, for whoever decodes next.
        if _DOT_SEGMENTS.intersection(decoded.replace("\\", "/").split("/")):
            raise ValueError(f"the path must not contain '.' or '..' segments: {path!r}")
        once_more = unquote(decoded)
        if once_more == decoded:
            return path
        decoded = once_more


@dataclass(frozen=True)
class Job:
    """A request to ``/async-function/NAME[/PATH]``, kept until it is delivered or given up."""

    call_id: str
    function: str
    method: str = "POST"
    path: str = ""  # what followed /async-function/NAME, still percent-encoded: "" or "/..."
    query: str = ""  # still percent-encoded
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    callback_url: str | None = None
    # Its caller was let call the function as a private one (its token or the admin's
    # password): only then does a worker add the function's token. A job queued while the
    # function was public runs without it, should the function be private by the time it runs.
    # (True for jobs stored before this was kept: they were checked then as they are now.)
    private_ok: bool = True
    submitted_at: float = field(default_factory=time.time)
    attempts: int = 0  # failed attempts so far; an interrupted one (crash, shutdown) does not count
    last_error: str = ""
    not_before: float = 0.0  # unix time before which it must not run (retry backoff)

    def failed_once_more(self, error: str, not_before: float) -> Job:
        return replace(self, attempts=self.attempts + 1, last_error=error, not_before=not_before)

    def function_url(self, gateway_url: str) -> URL:
        """The URL that runs it: the gateway's ``/function/NAME`` route, with the path and query
        as the caller encoded them. Built ``encoded`` so that nothing decodes or normalises it
        on the way: it can name no other route. ValueError for a path that would climb out."""
        url = f"{gateway_url}/function/{quote(self.function, safe='')}{check_path(self.path)}"
        return URL(f"{url}?{self.query}" if self.query else url, encoded=True)

    def meta(self) -> dict[str, Any]:
        """Everything but the body, as JSON-ready data."""
        return {
            "callId": self.call_id,
            "function": self.function,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": [list(h) for h in self.headers],
            "callbackUrl": self.callback_url,
            "privateOk": self.private_ok,
            "submittedAt": self.submitted_at,
            "attempts": self.attempts,
            "lastError": self.last_error,
            "notBefore": self.not_before,
        }

    def meta_json(self) -> str:
        # ensure_ascii: the result also travels as a NATS header value, which must be ASCII.
        return json.dumps(self.meta(), separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], body: bytes) -> Job:
        return cls(
            call_id=str(meta["callId"]),
            function=str(meta["function"]),
            method=str(meta.get("method", "POST")),
            path=str(meta.get("path", "")),
            query=str(meta.get("query", "")),
            headers=tuple((str(k), str(v)) for k, v in meta.get("headers", [])),
            body=body,
            callback_url=meta.get("callbackUrl") or None,
            private_ok=meta.get("privateOk", True) is True,
            submitted_at=float(meta.get("submittedAt", 0.0)),
            attempts=int(meta.get("attempts", 0)),
            last_error=str(meta.get("lastError", "")),
            not_before=float(meta.get("notBefore", 0.0)),
        )


@dataclass(frozen=True)
class JobInfo:
    """A queued or dead-lettered job as ``GET /system/queue`` lists it (no body)."""

    call_id: str
    function: str
    state: str  # "pending" (queued, waiting to retry, or running) or "failed" (dead-lettered)
    method: str
    path: str
    callback_url: str | None
    submitted_at: float
    attempts: int
    last_error: str
    body_size: int

    @classmethod
    def of(cls, job: Job, state: str) -> JobInfo:
        return cls(
            call_id=job.call_id,
            function=job.function,
            state=state,
            method=job.method,
            path=job.path,
            callback_url=listed_callback(job.callback_url),
            submitted_at=job.submitted_at,
            attempts=job.attempts,
            last_error=job.last_error,
            body_size=len(job.body),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "callId": self.call_id,
            "function": self.function,
            "state": self.state,
            "method": self.method,
            "path": self.path,
            "callbackUrl": self.callback_url,
            "submittedAt": self.submitted_at,
            "attempts": self.attempts,
            "lastError": self.last_error,
            "bodySize": self.body_size,
        }


@dataclass(frozen=True)
class QueueDepth:
    pending: int  # waiting, backing off, or running
    failed: int  # in the dead-letter list

    def to_json(self) -> dict[str, int]:
        return {"pending": self.pending, "failed": self.failed}
