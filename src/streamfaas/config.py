"""Settings: one object per process, read once from environment, flags and stack.yaml.

Watchdog settings keep OpenFaaS's environment names (``read_timeout``, ``exec_timeout`` …) so a
function's stack.yaml carries over unchanged.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .admission import DEFAULT_PER_TURN
from .errors import ConfigError

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | float | int, *, name: str = "duration") -> float:
    """Parse a Go-style duration (``60s``, ``1m30s``, ``500ms``) or a bare number of seconds.

    Returns seconds. ``0`` means "no limit" wherever a duration is a limit.
    """
    if isinstance(text, int | float):
        if not math.isfinite(text):
            raise ConfigError(f"{name}: invalid duration {text!r}")
        if text < 0:
            raise ConfigError(f"{name}: must not be negative, got {text}")
        return float(text)
    value = text.strip()
    if not value:
        raise ConfigError(f"{name}: empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):  # float() takes "nan" and "inf"; neither is a duration
            raise ConfigError(f"{name}: invalid duration {value!r} (use a number of seconds, e.g. 60)")
        if seconds < 0:
            raise ConfigError(f"{name}: must not be negative, got {value!r}")
        return seconds
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise ConfigError(
            f"{name}: invalid duration {value!r} (use a number of seconds or Go style, e.g. 60s, 1m30s, 500ms)"
        )
    return total


def parse_bool(text: str | bool, *, name: str = "setting") -> bool:
    if isinstance(text, bool):
        return text
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name}: expected true or false, got {text!r}")


def parse_int(text: str | int, *, name: str, minimum: int = 0) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected an integer, got {text!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def default_state_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "streamfaas"


DEFAULT_MAX_BODY = 10 * 1024 * 1024
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_HEARTBEAT_INTERVAL = 15.0
DEFAULT_SSE_RETRY = 3.0
DEFAULT_RESUME_WINDOW = 300.0
DEFAULT_RESUME_GRACE = 30.0
DEFAULT_RESUME_MAX_BYTES = 1024 * 1024
RESUME_FALLBACKS = ("error", "rerun")
# of-watchdog's modes that streamfaas runs: ``http`` (a function server, the default here),
# ``streaming`` and ``serializing`` (one process per request), ``static`` (a folder).
WATCHDOG_MODES = ("http", "streaming", "serializing", "static")


def parse_mode(text: str) -> str:
    mode = text.strip().lower() or "http"
    if mode not in WATCHDOG_MODES:
        raise ConfigError(f"mode: expected one of {', '.join(WATCHDOG_MODES)}, got {text!r}")
    return mode


def parse_upstream_url(text: str) -> str:
    """``upstream_url`` as the watchdog reaches it: plain HTTP to a host and port (a function
    server beside it), optionally with a path prefix; "" for the platform's own socket."""
    if not text:
        return ""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        parts = urlsplit("")
    if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"upstream_url: expected an http:// address such as http://127.0.0.1:5000, got {text!r}")
    return text


# Settings only the platform gives a provider-run watchdog; a function's environment cannot
# set or override them (e.g. point the watchdog at another upstream).
WATCHDOG_PLATFORM_ONLY = ("STREAMFAAS_LISTEN_FD", "STREAMFAAS_READY_FD", "STREAMFAAS_REPLICA", "STREAMFAAS_FUNCTION",
                          "STREAMFAAS_SANDBOX", "STREAMFAAS_FUNCTION_SOCKET", "upstream_url", "port",
                          "STREAMFAAS_WATCHDOG_HOST", "STREAMFAAS_SHUTDOWN_DELAY")


def watchdog_setting_errors(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """The watchdog settings in a function's environment that its watchdog would refuse, as
    ``(key, why)``: each key is read alone by ``WatchdogConfig.from_env``, the watchdog's own
    parser, so a deploy is checked by the very code that would fail later, and every bad key
    is named. Keys the platform sets itself (``WATCHDOG_PLATFORM_ONLY``) are never read from a
    function's environment, so they are not checked."""
    errors = []
    for key, value in env.items():
        if key in WATCHDOG_PLATFORM_ONLY:
            continue
        try:
            WatchdogConfig.from_env({key: value})
        except ConfigError as exc:
            errors.append((key, str(exc).removeprefix(f"{key}: ")))
    return errors


@dataclass(frozen=True)
class WatchdogConfig:
    """Settings of one watchdog (one function replica), from its environment."""

    fprocess: str = ""
    mode: str = "http"
    static_path: str = ""  # static mode's folder; empty: the handler's public/ folder
    content_type: str = "application/octet-stream"  # of the streaming and serializing modes' responses
    upstream_url: str = ""
    port: int = 8080
    host: str = "127.0.0.1"
    listen_fd: int | None = None
    ready_fd: int | None = None
    read_timeout: float = DEFAULT_READ_TIMEOUT
    write_timeout: float = 600.0
    exec_timeout: float = 600.0
    idle_timeout: float = 120.0
    ready_timeout: float = 60.0
    buffer_body: bool = False
    max_body: int = DEFAULT_MAX_BODY  # enforced by the gateway, and here on bodies read whole (buffer_body, forking)
    max_inflight: int = 0
    healthcheck_interval: float = 5.0
    drain_timeout: float = 30.0
    # After SIGTERM, serve new requests this long before draining: on Kubernetes the gateways
    # learn that a pod is going from an Endpoints watch, a moment after the kubelet signals it.
    shutdown_delay: float = 0.0
    function_name: str = "function"
    replica_id: str = "0"
    threads: int = 64
    # Acted on by the gateway (SseSettings); read here so a bad value fails the deploy.
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    sse_retry: float = DEFAULT_SSE_RETRY
    stream_resume: bool = False
    resume_window: float = DEFAULT_RESUME_WINDOW
    resume_grace: float = DEFAULT_RESUME_GRACE
    resume_max_bytes: int = DEFAULT_RESUME_MAX_BYTES
    resume_fallback: str = "error"
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WatchdogConfig:
        def duration(key: str, default: float) -> float:
            raw = env.get(key)
            return default if raw is None or raw == "" else parse_duration(raw, name=key)

        listen_fd = env.get("STREAMFAAS_LISTEN_FD")
        ready_fd = env.get("STREAMFAAS_READY_FD")
        return cls(
            # of-watchdog's long name wins over the short one, as there.
            fprocess=env.get("function_process") or env.get("fprocess", ""),
            mode=parse_mode(env.get("mode", "")),
            static_path=env.get("static_path", ""),
            content_type=env.get("content_type") or "application/octet-stream",
            upstream_url=parse_upstream_url(env.get("upstream_url", "")),
            port=parse_int(env.get("port", "8080"), name="port"),
            host=env.get("STREAMFAAS_WATCHDOG_HOST", "127.0.0.1"),
            listen_fd=parse_int(listen_fd, name="STREAMFAAS_LISTEN_FD") if listen_fd else None,
            ready_fd=parse_int(ready_fd, name="STREAMFAAS_READY_FD") if ready_fd else None,
            read_timeout=duration("read_timeout", DEFAULT_READ_TIMEOUT),
            write_timeout=duration("write_timeout", 600.0),
            exec_timeout=duration("exec_timeout", 600.0),
            idle_timeout=duration("idle_timeout", 120.0),
            ready_timeout=duration("ready_timeout", 60.0),
            buffer_body=parse_bool(env.get("buffer_body", "false"), name="buffer_body"),
            max_body=parse_size(env.get("max_body") or DEFAULT_MAX_BODY, name="max_body"),
            max_inflight=parse_int(env.get("max_inflight", "0"), name="max_inflight"),
            healthcheck_interval=duration("healthcheck_interval", 5.0),
            drain_timeout=duration("drain_timeout", 30.0),
            shutdown_delay=duration("STREAMFAAS_SHUTDOWN_DELAY", 0.0),
            function_name=env.get("STREAMFAAS_FUNCTION", "function"),
            replica_id=env.get("STREAMFAAS_REPLICA", "0"),
            threads=parse_int(env.get("threads", "64"), name="threads", minimum=1),
            heartbeat_interval=_heartbeat(duration("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL)),
            sse_retry=duration("sse_retry", DEFAULT_SSE_RETRY),
            stream_resume=parse_bool(env.get("stream_resume") or "false", name="stream_resume"),
            resume_window=_positive(duration("resume_window", DEFAULT_RESUME_WINDOW), "resume_window"),
            resume_grace=duration("resume_grace", DEFAULT_RESUME_GRACE),
            resume_max_bytes=int(_positive(parse_size(env.get("resume_max_bytes") or DEFAULT_RESUME_MAX_BYTES, name="resume_max_bytes"), "resume_max_bytes")),
            resume_fallback=_fallback(env.get("resume_fallback") or "error"),
        )


MIN_HEARTBEAT_INTERVAL = 0.1


def _heartbeat(seconds: float) -> float:
    # A tiny interval would turn every idle stream into a busy loop in the gateway.
    if 0 < seconds < MIN_HEARTBEAT_INTERVAL:
        raise ConfigError(f"heartbeat_interval: must be 0 (off) or at least 100ms, got {seconds:g}s")
    return seconds


def _positive(value: float, name: str) -> float:
    if value <= 0:
        raise ConfigError(f"{name}: must be more than 0, got {value:g}")
    return value


def _fallback(text: str) -> str:
    value = text.strip().lower()
    if value not in RESUME_FALLBACKS:
        raise ConfigError(f"resume_fallback: expected one of {', '.join(RESUME_FALLBACKS)}, got {text!r}")
    return value


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|kib|k|mb|mib|m|gb|gib|g)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
               "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str | int, *, name: str = "size") -> int:
    """Parse a byte size: ``1048576``, ``512KiB``, ``1MiB``, ``1MB`` (decimal), ``1M`` (binary)."""
    if isinstance(text, int):
        return parse_int(text, name=name)
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"{name}: invalid size {text!r} (use bytes or a unit, e.g. 512KiB, 1MiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])


@dataclass(frozen=True)
class BodyLimits:
    """What the gateway holds a function's request bodies to (its ``max_body`` and ``read_timeout``)."""

    max_body: int = DEFAULT_MAX_BODY  # a bigger body gets 413; 0: no limit
    read_timeout: float = DEFAULT_READ_TIMEOUT  # to receive a buffered body, else 408; 0: none

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BodyLimits:
        """Lenient: a bad value keeps its default here, and the watchdog, which reads the same
        settings strictly, reports it and keeps the replica unready."""
        limits = cls()
        try:
            max_body = parse_size(env.get("max_body") or limits.max_body, name="max_body")
        except ConfigError:
            max_body = limits.max_body
        try:
            read_timeout = parse_duration(env.get("read_timeout") or limits.read_timeout, name="read_timeout")
        except ConfigError:
            read_timeout = limits.read_timeout
        return cls(max_body=max_body, read_timeout=read_timeout)


@dataclass(frozen=True)
class SseSettings:
    """What the gateway adds to a function's event streams (``heartbeat_interval``, ``sse_retry``)."""

    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL  # silence before a ``: ping``; 0: none
    retry_ms: int = int(DEFAULT_SSE_RETRY * 1000)  # the ``retry:`` hint; 0: none

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SseSettings:
        """Lenient, as ``BodyLimits.from_env``: a deploy with a bad value is refused already
        (``watchdog_setting_errors``), so one seen here keeps its default."""
        return _sse_settings(env.get("heartbeat_interval") or "", env.get("sse_retry") or "")


@functools.lru_cache(maxsize=256)
def _sse_settings(heartbeat: str, retry: str) -> SseSettings:
    # Cached on the raw values: read per request, parsed once per distinct setting.
    try:
        interval = _heartbeat(parse_duration(heartbeat, name="heartbeat_interval")) if heartbeat else DEFAULT_HEARTBEAT_INTERVAL
    except ConfigError:
        interval = DEFAULT_HEARTBEAT_INTERVAL
    try:
        retry_s = parse_duration(retry, name="sse_retry") if retry else DEFAULT_SSE_RETRY
    except ConfigError:
        retry_s = DEFAULT_SSE_RETRY
    # A retry under 1 ms but above 0 still asks for one: 0 is reserved for "no hint".
    return SseSettings(heartbeat_interval=interval, retry_ms=max(1, round(retry_s * 1000)) if retry_s else 0)


@dataclass(frozen=True)
class ResumeSettings:
    """A function's resumable streams (``stream_resume`` and the ``resume_*`` settings), or
    None from ``from_env`` when it has none."""

    window: float = DEFAULT_RESUME_WINDOW  # a finished stream's events are kept this long
    grace: float = DEFAULT_RESUME_GRACE  # the function runs on this long with no client
    max_bytes: int = DEFAULT_RESUME_MAX_BYTES  # one stream's journal; the oldest bytes go first
    rerun: bool = False  # an unknown or expired id gets a fresh call (``resume_fallback: rerun``)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ResumeSettings | None:
        """Lenient, as ``SseSettings.from_env``: a deploy with a bad value was refused already."""
        if not env.get("stream_resume"):
            return None
        return _resume_settings(*(env.get(k) or "" for k in _RESUME_KEYS))


_RESUME_KEYS = ("stream_resume", "resume_window", "resume_grace", "resume_max_bytes", "resume_fallback")


@functools.lru_cache(maxsize=256)
def _resume_settings(*raw: str) -> ResumeSettings | None:
    try:
        config = WatchdogConfig.from_env({k: v for k, v in zip(_RESUME_KEYS, raw, strict=True) if v})
    except ConfigError:
        return None
    if not config.stream_resume:
        return None
    return ResumeSettings(window=config.resume_window, grace=config.resume_grace,
                          max_bytes=config.resume_max_bytes, rerun=config.resume_fallback == "rerun")


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str, *, name: str = "network") -> IPNetwork:
    """A network in CIDR notation (``10.0.0.0/8``, ``fd00::/8``), or one address (``/32``, ``/128``)."""
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError as exc:
        raise ConfigError(f"{name}: expected a network such as 10.0.0.0/8 or 127.0.0.1/32, got {text!r} ({exc})") from None


@dataclass(frozen=True)
class QueueConfig:
    """Async invocations: where jobs are kept and how a queue worker runs them."""

    backend: str = "sqlite"  # "sqlite" (a file in the state directory) or "nats" (JetStream)
    sqlite_path: Path | None = None  # default: <state dir>/queue.db
    nats_url: str = "nats://127.0.0.1:4222"
    nats_stream: str = "STREAMFAAS_ASYNC"
    max_body: int = 1024 * 1024  # a bigger async request body gets 413
    max_response: int = 64 * 1024 * 1024  # a function's bigger answer to a job: dead-lettered; 0: no limit
    max_bytes: int = 1024 * 1024 * 1024  # what the queue may hold (jobs and dead letters): past it, 503; 0: no limit
    worker: bool = True  # the gateway runs a queue worker in-process
    concurrency: int = 8  # jobs of one function a worker runs at once
    max_retries: int = 5  # failed attempts retried before a job is dead-lettered
    backoff: float = 1.0  # the first retry's delay; doubled each time
    backoff_max: float = 60.0
    lease: float = 30.0  # a job a worker stopped renewing (it died) runs again after this
    drain_timeout: float = 30.0  # on shutdown, in-flight jobs get this long, then go back
    invoke_timeout: float = 600.0
    callback_timeout: float = 30.0
    # Networks a callback may go to besides public unicast addresses (``--callback-allow``).
    callback_allow: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        if self.backend not in {"sqlite", "nats"}:
            raise ConfigError(f"queue: expected sqlite or nats, got {self.backend!r}")
        if self.concurrency < 1:
            raise ConfigError(f"queue concurrency: must be at least 1, got {self.concurrency}")
        if self.lease <= 0:
            raise ConfigError("queue lease: must be more than 0")


PROVIDERS = ("local", "kubernetes")
_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class GatewayConfig:
    """Settings of the gateway process (and the embedded local provider)."""

    host: str = "127.0.0.1"
    port: int = 8080
    state_dir: Path = field(default_factory=default_state_dir)
    upstream_timeout: float = 600.0
    cold_start_timeout: float = 60.0
    port_file: Path | None = None
    queue: QueueConfig = field(default_factory=QueueConfig)
    auth: bool = True  # the admin's basic auth on /system and /ui; False: ``--auth none``
    auth_user: str = "admin"
    auth_password_file: Path | None = None
    # ``--auth none`` on an address other hosts reach: refused unless this says it is meant.
    public_without_auth: bool = False
    metrics_auth: bool = False  # /metrics behind the admin's basic auth too
    sandbox: bool = True
    header_timeout: float = 10.0  # a connection's request head must arrive within this; 0: no limit
    keepalive_timeout: float = 75.0  # an idle kept-alive connection is closed after this
    provider: str = "local"  # "local" (processes here) or "kubernetes"
    # The kubernetes provider's cluster: this kubeconfig; None: the in-cluster service account
    # when running in a pod, else $KUBECONFIG or ~/.kube/config.
    kubeconfig: Path | None = None
    namespace: str = "openfaas-fn"  # the kubernetes provider's functions namespace
    # The UI's stream charts: seconds between samples of the gateway's stream metrics (5 min kept).
    stream_history_interval: float = 5.0
    # Every resumable stream's journal together, in this gateway; the oldest bytes go first.
    resume_journal_bytes: int = 64 * 1024 * 1024
    # New function requests that start their work in one turn of the event loop (admission.py);
    # the rest wait for the next turns, in order. 0: no limit.
    admit_per_turn: int = DEFAULT_PER_TURN
    autoscale: AutoscaleConfig = field(default_factory=lambda: AutoscaleConfig())

    def __post_init__(self) -> None:
        if self.admit_per_turn < 0:
            raise ConfigError(f"--admit-per-turn: expected 0 or more, got {self.admit_per_turn}")
        if self.provider not in PROVIDERS:
            raise ConfigError(f"--provider: expected one of {', '.join(PROVIDERS)}, got {self.provider!r}")
        if not _NAMESPACE_RE.fullmatch(self.namespace):
            raise ConfigError(
                f"--namespace: {self.namespace!r} is not a Kubernetes namespace name "
                "(lowercase letters, digits and '-', at most 63)"
            )
        if not self.auth and not self.public_without_auth and not is_loopback(self.host):
            raise ConfigError(
                f"--auth none on --host {self.host!r}, which is not a loopback address: anyone who "
                "reaches it could deploy and run code as this user. Keep the default host "
                "(127.0.0.1), or add --i-know-no-auth-is-public on a network you trust"
            )
        if not 0.1 <= self.stream_history_interval <= 60:
            raise ConfigError(f"--stream-history-interval: expected 100ms to 1m, got {self.stream_history_interval:g}s")
        if self.metrics_auth and not self.auth:
            raise ConfigError("--metrics-auth needs --auth basic: with --auth none there is no password")


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a name, or "" (every address): not provably local


AUTOSCALE_TYPES = ("capacity", "rps", "cpu")


@dataclass(frozen=True)
class AutoscaleConfig:
    """The gateway's autoscaler (``streamfaas.autoscale``): how often it looks, its windows, and
    the defaults of the ``com.openfaas.scale.*`` labels a function does not set."""

    enabled: bool = True
    interval: float = 1.0  # seconds between two looks at every function's load
    stable_window: float = 60.0  # load is averaged over this to size a function, and to scale it down
    panic_window: float = 6.0  # a peak over twice the capacity in this scales up at once
    default_type: str = "capacity"
    default_target: int = 50
    default_zero_duration: float = 15 * 60.0

    def __post_init__(self) -> None:
        if not 0.05 <= self.interval <= 60:
            raise ConfigError(f"--autoscale-interval: expected 50ms to 60s, got {self.interval:g}s")
        if not 0 < self.panic_window <= self.stable_window:
            raise ConfigError(f"--autoscale-panic-window ({self.panic_window:g}s) must be above 0 and at most "
                              f"--autoscale-stable-window ({self.stable_window:g}s)")
        if self.default_type not in AUTOSCALE_TYPES:
            raise ConfigError(f"--scale-default-type: expected one of {', '.join(AUTOSCALE_TYPES)}, got {self.default_type!r}")
        if self.default_target < 1:
            raise ConfigError(f"--scale-default-target: must be at least 1, got {self.default_target}")
        if self.default_zero_duration <= 0:
            raise ConfigError("--scale-default-zero-duration: must be above 0")
