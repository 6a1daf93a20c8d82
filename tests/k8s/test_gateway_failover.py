"""Two gateways, one killed (``kubectl delete pod --grace-period=0 --force``) while async jobs
and streams run through both: nothing accepted is lost.

The chart is installed with NATS and a queue worker that knows both gateway pods' addresses.
Before the kill, gated streams are open on both gateways and async jobs (each a 5 s function
call, its result POSTed to a callback receiver this test runs on the cluster bridge's host
address) go in through both. Then one gateway dies, and:

- every job that got a 202 reaches its callback at least once (the counts are printed), the
  ones whose call the kill cut included: the worker runs them again through the other gateway;
- the streams on the surviving gateway get every event, in order, and ``done``;
- the streams on the killed gateway end (an error or EOF), none hangs;
- once the Service's Endpoints drop the dead pod, new requests to its addresses succeed (the
  cluster has no kube-proxy, so the test plays the Service: it reads the Endpoints)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from helm_install_fixture import (
    GATEWAY,
    PROBE,
    Release,
    api_address,
    install,
    new_release,
    platform_images,
    publish,
)
from httpx_sse import connect_sse
from k8s_fixture import K8sEnv, Kubectl, require_cluster

from platform_fixture import wait_for

require_cluster()
pytestmark = [pytest.mark.k8s, pytest.mark.helm, pytest.mark.timeout(600)]

FUNCTION = "fprobe"
JOBS = 40  # before the kill, alternating gateways
JOBS_AFTER = 10  # after the Endpoints dropped the dead pod
# Each job's function call streams this many events 0.05 s apart: 5 s, longer than a killed
# gateway's last 2 s (the kubelet's least grace period), so the kill cuts the calls in flight.
JOB_EVENTS = 100
STREAMS_PER_GATEWAY = 3
STREAM_EVENTS = 20
READ_TIMEOUT = 90.0  # longer than any wait of the scenario: a stream that hangs stays hung


class CallbackReceiver:
    """An HTTP server that records the call id of every callback and answers 200. It listens on
    the cluster bridge's host address, which the queue worker's pod reaches."""

    def __init__(self, host: str) -> None:
        self.calls: list[tuple[str, str]] = []  # (call id, the function's status)
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    receiver.calls.append((self.headers.get("X-Call-Id", ""), self.headers.get("X-Function-Status", "")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._lock = lock
        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/done"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(call_id for call_id, _ in self.calls)

    def statuses(self) -> set[str]:
        with self._lock:
            return {status for _, status in self.calls}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stream:
    """One gated stream from the probe function, read on a thread of its own."""

    ip: str
    sid: str = field(default_factory=lambda: f"s-{uuid.uuid4().hex[:8]}")
    events: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""
    first: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    ended_at: float = 0.0

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._read, daemon=True, name=f"stream-{self.sid}")
        thread.start()
        return thread

    def _read(self) -> None:
        timeout = httpx.Timeout(5.0, read=READ_TIMEOUT)
        params = {"id": self.sid, "n": str(STREAM_EVENTS)}
        try:
            with httpx.Client(timeout=timeout) as client, \
                    connect_sse(client, "POST", f"http://{self.ip}:8080/function/{FUNCTION}", params=params) as es:
                for sse in es.iter_sse():
                    self.events.append((sse.event, sse.data))
                    self.first.set()
        except httpx.HTTPError as exc:
            self.error = f"{exc.__class__.__name__}: {exc}"
        finally:
            self.ended_at = time.monotonic()
            self.ended.set()

    def complete(self) -> bool:
        data = [d for e, d in self.events if e == "message"]
        return (not self.error and bool(self.events) and self.events[-1][0] == "done"
                and data[1:] == [str(i) for i in range(STREAM_EVENTS)] and data[0].startswith("first "))


@dataclass
class Failover:
    """What happened around the kill."""

    victim: str
    survivor: str
    accepted: list[str]  # call ids that got a 202
    refused: list[str]  # submissions that got no 202 (why)
    callbacks: Counter[str]
    statuses: set[str]
    streams: list[Stream]
    killed_at: float
    endpoints_after: list[str]
    new_streams: list[Stream]
    queue_depth: dict[str, int]
    function_runs: int  # the probe's generators that ended: each stream and each job call once
    worker_log: str

    @property
    def calls_run_again(self) -> int:
        """Function calls beyond one per job and stream: the job calls cut and run again."""
        return self.function_runs - len(self.accepted) - len(self.streams) - len(self.new_streams)


def submit(ip: str, callback: str, job: str) -> str:
    """POST /async-function: the call id, or raise with why it was not accepted."""
    r = httpx.post(f"http://{ip}:8080/async-function/{FUNCTION}", params={"id": job, "gate": "0", "n": str(JOB_EVENTS)},
                   headers={"X-Callback-Url": callback}, timeout=httpx.Timeout(10.0, connect=3.0))
    assert r.status_code == 202, f"{ip}: HTTP {r.status_code}: {r.text[:200]}"
    return r.headers["X-Call-Id"]


def ready_endpoints(release: Release) -> list[str]:
    """The ready addresses of the gateway Service's Endpoints: where a Service would send."""
    endpoints = release.kubectl.get("endpoints", f"{release.fullname}-gateway", namespace=release.namespace)
    return [a["ip"] for s in (endpoints or {}).get("subsets") or [] for a in s.get("addresses") or []]


# ---- the release, the function, the callback receiver -------------------------------------------
@pytest.fixture(scope="module")
def release(kubectl: Kubectl, k8s_env: K8sEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    with new_release(kubectl, k8s_env, tmp_path_factory.mktemp("failover-home"), name="f", namespace="sf-failover") as rel:
        rel.values.append("networkPolicy.enabled=false")  # nothing here about policies; one object less
        # The callback receiver listens on the bridge's (private) address: allowed explicitly,
        # at the gateways (checked at submit) and at the worker (checked when it connects).
        allow = f"--callback-allow={api_address(k8s_env)[0]}/32"
        rel.values += [f"gateway.extraArgs[0]={allow}", f"queue.worker.extraArgs[0]={allow}"]
        yield rel


@pytest.fixture(scope="module")
def installed(release: Release, k8s_env: K8sEnv) -> Release:
    install(release, platform_images(k8s_env.registry), worker_gateways="all")
    gateways = release.ready_ips(GATEWAY)
    worker = release.pods("app.kubernetes.io/component=queue-worker")[0]["spec"]["containers"][0]["args"]
    assert sorted(a for a in worker if a.startswith("--gateway=")) == sorted(f"--gateway=http://{ip}:8080" for ip in gateways)
    return release


@pytest.fixture(scope="module")
def probe(installed: Release, tmp_path_factory: pytest.TempPathFactory) -> str:
    image = publish(installed, {FUNCTION: PROBE}, tmp_path_factory.mktemp("failover-stack"))[FUNCTION]
    url = installed.gateway_url()
    r = httpx.post(f"{url}/system/functions", json={"service": FUNCTION, "image": image},
                   auth=("admin", installed.password()), timeout=30)
    assert r.status_code == 202, r.text
    for ip in installed.ready_ips(GATEWAY):  # both gateways see it and route to it
        wait_for(lambda ip=ip: _status(f"http://{ip}:8080/function/{FUNCTION}/whoami") == 200, 120, interval=0.5,
                 what=f"{FUNCTION} to answer through {ip}")
    return FUNCTION


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError:
        return 0


@pytest.fixture(scope="module")
def receiver(k8s_env: K8sEnv) -> Iterator[CallbackReceiver]:
    server = CallbackReceiver(api_address(k8s_env)[0])
    try:
        yield server
    finally:
        server.close()


# ---- the kill ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def failover(installed: Release, probe: str, receiver: CallbackReceiver) -> Failover:
    victim, survivor = sorted(installed.ready_ips(GATEWAY))
    [victim_pod] = [p["metadata"]["name"] for p in installed.pods(GATEWAY) if p["status"]["podIP"] == victim]
    admin = ("admin", installed.password())

    streams = [Stream(ip) for ip in (victim, survivor) for _ in range(STREAMS_PER_GATEWAY)]
    threads = [s.start() for s in streams]
    wait_for(lambda: all(s.first.is_set() or s.ended.is_set() for s in streams), 60, interval=0.1,
             what="every stream's first event")
    assert all(s.first.is_set() for s in streams), [s.error for s in streams]

    accepted: list[str] = []
    refused: list[str] = []
    for i in range(JOBS):
        accepted.append(submit((victim, survivor)[i % 2], receiver.url, f"job-{i}"))
    # Jobs are running through both gateways (the worker takes them in turn) when the kill comes.
    wait_for(lambda: len(receiver.counts()) >= 1, 60, interval=0.1, what="the first callback")

    killed_at = time.monotonic()
    installed.kubectl.run("delete", "pod", victim_pod, "-n", installed.namespace, "--grace-period=0", "--force",
                          "--wait=false")
    # The survivor's streams go on now. The victim's stay gated, so nothing but the kill ends
    # them; they are released once ended, so that their generators end too (counted below).
    for s in sorted(streams, key=lambda s: s.ip != survivor):
        if s.ip == victim:
            threads[streams.index(s)].join(READ_TIMEOUT + 15)
        httpx.get(f"http://{survivor}:8080/function/{FUNCTION}/release", params={"id": s.sid}, timeout=30)
    for thread in threads:
        thread.join(READ_TIMEOUT + 15)

    # Playing the Service: new requests go to its ready addresses, once the dead pod's is gone.
    endpoints = wait_for(lambda: (lambda eps: eps if eps and victim not in eps else None)(ready_endpoints(installed)),
                         60, interval=0.2, what=f"the gateway Service's Endpoints to drop {victim}")
    new_streams = [Stream(ip) for ip in endpoints]
    new_threads = [s.start() for s in new_streams]
    for s in new_streams:
        httpx.get(f"http://{s.ip}:8080/function/{FUNCTION}/release", params={"id": s.sid}, timeout=30)
    for i in range(JOBS_AFTER):
        try:
            accepted.append(submit(endpoints[i % len(endpoints)], receiver.url, f"after-{i}"))
        except (AssertionError, httpx.HTTPError) as exc:
            refused.append(str(exc))
    for thread in new_threads:
        thread.join(READ_TIMEOUT + 15)

    def delivered() -> bool:
        return set(accepted) <= set(receiver.counts())

    try:
        wait_for(delivered, 150, interval=0.5, what="a callback for every accepted job")
    except AssertionError:
        pass  # the tests below name what is missing

    def drained() -> dict[str, int] | None:
        r = httpx.get(f"http://{survivor}:8080/system/queue", params={"limit": "1"}, auth=admin, timeout=10)
        depth: dict[str, int] = r.json()["depth"]
        return depth if depth["pending"] == 0 else None

    try:
        depth = wait_for(drained, 30, interval=0.5, what="the queue to drain")
    except AssertionError:
        depth = httpx.get(f"http://{survivor}:8080/system/queue", auth=admin, timeout=10).json()["depth"]

    runs = int(httpx.get(f"http://{survivor}:8080/function/{FUNCTION}/finallies", timeout=30).text)
    [worker] = installed.pods("app.kubernetes.io/component=queue-worker")
    log = installed.kubectl.run("logs", worker["metadata"]["name"], "-n", installed.namespace, check=False).stdout
    result = Failover(victim=victim, survivor=survivor, accepted=accepted, refused=refused, callbacks=receiver.counts(),
                      statuses=receiver.statuses(), streams=streams, killed_at=killed_at, endpoints_after=endpoints,
                      new_streams=new_streams, queue_depth=depth, function_runs=runs, worker_log=log)
    _report(result)
    return result


def _report(r: Failover) -> None:
    delivered = [c for c in r.accepted if r.callbacks[c]]
    duplicates = sum(r.callbacks[c] - 1 for c in delivered)
    survived = [s for s in r.streams if s.ip == r.survivor]
    cut = [s for s in r.streams if s.ip == r.victim]
    print(json.dumps({
        "accepted": len(r.accepted), "delivered": len(delivered), "lost": len(r.accepted) - len(delivered),
        "duplicates": duplicates, "not_accepted": len(r.refused), "job_calls_cut_and_run_again": r.calls_run_again,
        "survivor_streams_completed": f"{sum(s.complete() for s in survived)}/{len(survived)}",
        "killed_streams": [s.error.split(":")[0] or ("done" if s.complete() else "EOF") for s in cut],
        "killed_streams_ended_after_s": [round(s.ended_at - r.killed_at, 2) for s in cut],
        "new_streams_completed": f"{sum(s.complete() for s in r.new_streams)}/{len(r.new_streams)}",
        "queue_depth": r.queue_depth,
    }), flush=True)


# ---- what must hold ------------------------------------------------------------------------------
def test_every_accepted_async_job_is_delivered_to_its_callback(failover: Failover) -> None:
    lost = [c for c in failover.accepted if not failover.callbacks[c]]
    assert len(failover.accepted) == JOBS + JOBS_AFTER, failover.refused
    assert lost == [], f"{len(lost)} of {len(failover.accepted)} accepted jobs lost"
    assert failover.statuses == {"200"}


def test_job_calls_the_kill_cut_ran_again_through_the_other_gateway(failover: Failover) -> None:
    # Without a cut call the scenario would not have tested the worker's failover at all.
    assert failover.calls_run_again >= 1, "the kill cut no job's function call"
    assert "Traceback" not in failover.worker_log, failover.worker_log[-3000:]


def test_nothing_is_left_queued_or_dead_lettered(failover: Failover) -> None:
    assert failover.queue_depth == {"pending": 0, "failed": 0}


def test_streams_on_the_surviving_gateway_complete_untouched(failover: Failover) -> None:
    survived = [s for s in failover.streams if s.ip == failover.survivor]
    assert len(survived) == STREAMS_PER_GATEWAY
    for s in survived:
        assert s.complete(), (s.error, s.events)


def test_streams_on_the_killed_gateway_end_instead_of_hanging(failover: Failover) -> None:
    for s in (s for s in failover.streams if s.ip == failover.victim):
        assert s.ended.is_set(), f"stream {s.sid} on the killed gateway still open"
        # Ended by the connection's end (an error or EOF), well before the client's read timeout.
        assert s.ended_at - failover.killed_at < READ_TIMEOUT / 2, s.error


def test_new_requests_succeed_once_the_dead_endpoint_is_gone(failover: Failover) -> None:
    assert failover.victim not in failover.endpoints_after and failover.endpoints_after
    assert failover.new_streams and all(s.complete() for s in failover.new_streams), \
        [(s.ip, s.error, s.events[-1:]) for s in failover.new_streams]
    assert failover.refused == []
