"""Async invocations: a durable queue (``sqlite`` embedded, ``nats`` JetStream) and its worker."""

from __future__ import annotations

from pathlib import Path

from ..config import QueueConfig
from .base import FunctionSlots, JobNotFound, JobQueue, Lease, QueueUnavailable
from .callbacks import CallbackPolicy, CallbackRefused
from .job import AUTH_HEADERS, Job, JobInfo, QueueDepth, check_path
from .metrics import QueueMetrics
from .worker import FunctionTokens, QueueWorker, TokenUnavailable

__all__ = [
    "AUTH_HEADERS",
    "CallbackPolicy",
    "CallbackRefused",
    "FunctionSlots",
    "FunctionTokens",
    "Job",
    "JobInfo",
    "JobNotFound",
    "JobQueue",
    "Lease",
    "QueueDepth",
    "QueueMetrics",
    "QueueUnavailable",
    "QueueWorker",
    "TokenUnavailable",
    "check_path",
    "open_queue",
]


def open_queue(config: QueueConfig, state_dir: Path) -> JobQueue:
    """The queue ``config`` names (not started yet: ``await queue.start()``)."""
    if config.backend == "nats":
        try:
            from .jetstream import NatsQueue
        except ImportError:
            raise QueueUnavailable(
                "the nats queue needs nats-py: pip install 'streamfaas[nats]'"
            ) from None
        return NatsQueue(config.nats_url, stream=config.nats_stream, lease=config.lease, max_bytes=config.max_bytes)
    from .sqlite import SqliteQueue

    return SqliteQueue(config.sqlite_path or state_dir / "queue.db", lease=config.lease, max_bytes=config.max_bytes)
