"""README promises about the queue that no other test proves: a standalone worker's
``--metrics-port``, the SQLite file in WAL mode at ``--queue-db``, NATS's ``max_payload`` → 413."""

from __future__ import annotations

import re
import sqlite3
import uuid
from pathlib import Path

import httpx
from queue_fixture import ECHO, LOOPBACK_CALLBACKS, CallbackReceiver, NatsServer, Worker, submit

from platform_fixture import Platform


def test_standalone_worker_serves_its_metrics_and_shares_the_wal_queue_file(tmp_path: Path, receiver: CallbackReceiver) -> None:
    db = tmp_path / "elsewhere" / "jobs.db"
    db.parent.mkdir()
    queue = ("--queue", "sqlite", "--queue-db", str(db), *LOOPBACK_CALLBACKS)
    p = Platform(tmp_path / "state", (*queue, "--no-queue-worker")).start()
    worker = None
    try:
        p.deploy("echo", p.write_function(tmp_path, "echo", ECHO))
        # The gateway keeps its jobs where --queue-db says, in WAL mode.
        assert db.exists() and not (p.state_dir / "queue.db").exists()
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        worker = Worker(p, (*queue, "--metrics-port", "0"), tmp_path / "worker.log").start()
        found = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", worker.output())
        assert found, worker.output()
        call_id = f"m-{uuid.uuid4().hex[:8]}"
        assert submit(p, "echo", b"x", callback=receiver.url, call_id=call_id).status_code == 202
        receiver.wait_all([call_id], timeout=60)  # run by the standalone worker: the gateway has none
        text = httpx.get(found.group(1), timeout=10).text
        assert 'streamfaas_queue_completed_total{code="200",function_name="echo"} 1.0' in text, text
        assert 'streamfaas_queue_done_seconds_count{function_name="echo"} 1.0' in text
    finally:
        if worker is not None:
            worker.stop()
        p.close()


def test_nats_body_over_the_servers_max_payload_is_413(tmp_path: Path, nats_server: NatsServer) -> None:
    stream = f"PAYLOAD_{uuid.uuid4().hex[:8]}"
    args = ("--queue", "nats", "--nats-url", nats_server.url, "--nats-stream", stream, "--max-async-body", "4MiB", "--no-queue-worker")
    p = Platform(tmp_path / "state", args).start()
    try:
        p.deploy("echo", p.write_function(tmp_path, "echo", ECHO))
        assert submit(p, "echo", b"x" * 1024).status_code == 202
        r = submit(p, "echo", b"x" * (1024 * 1024 + 1))  # over nats-server's default 1 MB max_payload
        assert r.status_code == 413, r.text
    finally:
        p.close()
