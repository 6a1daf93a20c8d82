"""The provider API's JSON shapes, named as in OpenFaaS's faas-provider types.

Requests are read as Go's ``encoding/json`` reads them into those types: unknown keys are
ignored and ``null`` leaves a field at its zero value. Responses leave out what Go leaves out:
an ``omitempty`` field whose value is empty.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import AUTOSCALE_TYPES, parse_duration
from ..errors import BadRequest, ConfigError

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DEFAULT_NAMESPACE = "openfaas-fn"

# Labels OpenFaaS users set to steer scaling; we honour the same names.
LABEL_SCALE_MIN = "com.openfaas.scale.min"
LABEL_SCALE_MAX = "com.openfaas.scale.max"
LABEL_SCALE_ZERO = "com.openfaas.scale.zero"
LABEL_SCALE_ZERO_DURATION = "com.openfaas.scale.zero-duration"
LABEL_SCALE_TARGET = "com.openfaas.scale.target"
LABEL_SCALE_TYPE = "com.openfaas.scale.type"
LABEL_SCALE_PROPORTION = "com.openfaas.scale.target-proportion"
MAX_REPLICAS = 1000  # what /system/scale-function takes at most, and the highest max label
DEFAULT_MAX_REPLICAS = 20  # com.openfaas.scale.max when the label is not set
MAX_TARGET = 1_000_000
# capacity: requests in flight (open streams) plus those waiting for a replica; rps: requests
# started per second; cpu: millicores used.
SCALE_TYPES = AUTOSCALE_TYPES


@dataclass(frozen=True)
class ScaleLabels:
    """A function's scaling labels, read once per deployment.

    ``min``: replicas at the first deploy, the autoscaler's floor, and what a request starts
    when the function is at zero (at least 1 then); ``max``: the most replicas a scale request
    or the autoscaler gets (more is clamped to it); ``min == max`` turns autoscaling off, as on
    OpenFaaS. ``target`` (per replica, in ``type``'s unit) × ``proportion`` is the load one
    replica is sized for. ``zero``: the autoscaler scales the function to zero after
    ``zero_duration`` seconds without a request (scaling to zero by hand is always allowed).
    """

    min: int = 1
    max: int = DEFAULT_MAX_REPLICAS
    zero: bool = False
    target: int = 50
    type: str = "capacity"
    proportion: float = 0.9
    zero_duration: float = 15 * 60.0

    @classmethod
    def from_labels(cls, labels: dict[str, str], base: ScaleLabels | None = None) -> ScaleLabels:
        """Read the labels; one not set keeps ``base``'s value (the defaults above, or the
        gateway's own defaults). A bad value is a BadRequest that names the label."""
        base = base or _DEFAULTS
        minimum = _replicas_label(labels, LABEL_SCALE_MIN, default=base.min, lowest=0)
        maximum = _replicas_label(labels, LABEL_SCALE_MAX, default=base.max, lowest=1)
        if minimum > maximum:
            if LABEL_SCALE_MAX not in labels:  # only min was set: the default max follows it up
                maximum = max(minimum, maximum)
            else:
                raise BadRequest(
                    f"labels: {LABEL_SCALE_MIN} ({minimum}) is more than {LABEL_SCALE_MAX} ({maximum})"
                )
        zero = labels.get(LABEL_SCALE_ZERO)
        if zero is not None and zero.strip().lower() not in _BOOLEANS:
            raise BadRequest(f"labels: {LABEL_SCALE_ZERO}: expected true or false, got {zero!r}")
        kind = labels.get(LABEL_SCALE_TYPE, base.type).strip().lower()
        if kind not in SCALE_TYPES:
            raise BadRequest(f"labels: {LABEL_SCALE_TYPE}: expected one of {', '.join(SCALE_TYPES)}, "
                             f"got {labels[LABEL_SCALE_TYPE]!r}")
        return cls(
            min=minimum,
            max=maximum,
            zero=base.zero if zero is None else _BOOLEANS[zero.strip().lower()],
            target=_whole_label(labels, LABEL_SCALE_TARGET, default=base.target, lowest=1, highest=MAX_TARGET),
            type=kind,
            proportion=_proportion_label(labels, base.proportion),
            zero_duration=_duration_label(labels, base.zero_duration),
        )

    def clamp(self, replicas: int) -> int:
        """What a request for ``replicas`` gets: at most ``max`` (0 stays allowed)."""
        return min(replicas, self.max)

    @property
    def wake(self) -> int:
        """Replicas to start when a request finds none (OpenFaaS scales from zero to min)."""
        return min(max(self.min, 1), self.max)

    @property
    def fixed(self) -> bool:
        """``min == max``: autoscaling is off for this function (hand scaling still works)."""
        return self.min == self.max

    @property
    def per_replica(self) -> float:
        """The load one replica is sized for: ``target × proportion``."""
        return self.target * self.proportion


_DEFAULTS = ScaleLabels()
_DIGITS = re.compile(r"[0-9]{1,9}")
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _whole_label(labels: dict[str, str], key: str, *, default: int, lowest: int, highest: int) -> int:
    raw = labels.get(key)
    if raw is None:
        return default
    value = int(raw.strip()) if _DIGITS.fullmatch(raw.strip()) else -1
    if not lowest <= value <= highest:
        raise BadRequest(f"labels: {key}: expected a whole number from {lowest} to {highest}, got {raw!r}")
    return value


def _replicas_label(labels: dict[str, str], key: str, *, default: int, lowest: int) -> int:
    return _whole_label(labels, key, default=default, lowest=lowest, highest=MAX_REPLICAS)


def _proportion_label(labels: dict[str, str], default: float) -> float:
    raw = labels.get(LABEL_SCALE_PROPORTION)
    if raw is None:
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:  # NaN fails this too
        raise BadRequest(f"labels: {LABEL_SCALE_PROPORTION}: expected a number above 0 and at most 1, got {raw!r}")
    return value


def _duration_label(labels: dict[str, str], default: float) -> float:
    raw = labels.get(LABEL_SCALE_ZERO_DURATION)
    if raw is None:
        return default
    try:
        value = parse_duration(raw, name=LABEL_SCALE_ZERO_DURATION)
    except ConfigError:
        value = 0.0
    if value <= 0:
        raise BadRequest(f"labels: {LABEL_SCALE_ZERO_DURATION}: expected a duration above 0 "
                         f"(e.g. 15m, 90s, 300), got {raw!r}")
    return value


def check_name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ValueError(
            f"invalid function name {value!r}: use lowercase letters, digits and '-', at most 63"
        )
    return value


# An environment variable's name as Kubernetes takes it everywhere (a C identifier, plus '.' and
# '-'): no '=', which would set another name, and no NUL, which would end the entry early.
ENV_NAME_RE = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
# What a function's environment may hold in all (names and values): it travels to the replica
# on a command line or in one variable, which Linux caps at 128 KiB a string.
MAX_ENV_BYTES = 64 * 1024


def check_env(env: dict[str, str]) -> dict[str, str]:
    size = 0
    for name, value in env.items():
        if not ENV_NAME_RE.fullmatch(name):
            raise ValueError(f"invalid environment variable name {name!r}: use letters, digits, '_', '.' and '-', "
                             "not starting with a digit")
        if "\0" in value:
            raise ValueError(f"environment variable {name!r}: a value cannot hold a NUL character")
        size += len(name.encode()) + len(value.encode()) + 2
    if size > MAX_ENV_BYTES:
        raise ValueError(f"envVars hold {size} bytes; at most {MAX_ENV_BYTES} (use a secret for larger values)")
    return env


class GoRequest(BaseModel):
    """A request body as Go decodes it: unknown keys ignored, ``null`` meaning "not given"
    (older faas-cli releases send ``"labels": null``; Go clients send nil maps as ``null``)."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class FunctionResources(GoRequest):
    memory: str | None = None
    cpu: str | None = None


_RESOURCE_OMITEMPTY = frozenset({"memory", "cpu"})
# Pointer fields (*FunctionResources): omitempty drops nil only; a set, empty one is written as {}.
_POINTERS = frozenset({"limits", "requests"})


def _omit_empty(data: dict[str, Any], keys: frozenset[str]) -> dict[str, Any]:
    """``data`` without the ``keys`` whose value Go's omitempty drops: "", 0, false, nil, and
    an empty map or slice. (A pointer is dropped only when nil: pass those as None.)"""
    return {k: v for k, v in data.items() if k not in keys or v or (v is not None and k in _POINTERS)}


def _resources_json(resources: FunctionResources | None) -> dict[str, Any] | None:
    if resources is None:
        return None
    return _omit_empty(resources.model_dump(), _RESOURCE_OMITEMPTY)


def go_time(t: dt.datetime) -> str:
    """A time as Go's ``time.Time`` writes it in JSON: RFC 3339 in UTC, ``Z``, and a fraction
    of a second without trailing zeros. (Go's decoder takes RFC 3339 and nothing else.)"""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    t = t.astimezone(dt.UTC)
    text = t.replace(tzinfo=None).isoformat(timespec="seconds")  # strftime drops year 1's zeros
    if t.microsecond:
        text += f".{t.microsecond:06d}".rstrip("0")
    return text + "Z"


_KUBERNETES_DOMAINS = ("kubernetes.io", "k8s.io")
# Annotations the container runtimes read off a pod (CRI-O's io.kubernetes.cri-o.userns-mode or
# .Devices, containerd's, Kata's, gVisor's, Podman's, and NRI plugins' such as the device and mount
# injectors): keys that start so, or whose domain is CRI-O's or NRI's.
_RUNTIME_PREFIXES = ("io.kubernetes.", "io.containerd.", "io.katacontainers.", "dev.gvisor.", "io.podman.")
_RUNTIME_DOMAINS = ("cri-o.io", "crio.io", "nri.io", "noderesource.dev")


class FunctionDeployment(GoRequest):
    """Body of ``POST``/``PUT /system/functions``."""

    service: str
    image: str
    namespace: str = ""
    envProcess: str | None = None
    envVars: dict[str, str] = Field(default_factory=dict)
    constraints: list[str] = Field(default_factory=list)
    secrets: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    limits: FunctionResources | None = None
    requests: FunctionResources | None = None
    readOnlyRootFilesystem: bool = False

    @field_validator("service")
    @classmethod
    def _valid_service(cls, value: str) -> str:
        return check_name(value)

    @field_validator("envVars")
    @classmethod
    def _valid_env(cls, value: dict[str, str]) -> dict[str, str]:
        return check_env(value)

    @field_validator("envProcess", "labels", "annotations", "constraints")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # A NUL cannot reach a command line, an environment or the Kubernetes API.
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, dict):
            texts = [*value, *value.values()]
        else:
            texts = value or []
        if any("\0" in text for text in texts):
            raise ValueError("a NUL character is not allowed here")
        return value

    @field_validator("labels", "annotations")
    @classmethod
    def _not_kubernetes_own(cls, value: dict[str, str]) -> dict[str, str]:
        # Keys under kubernetes.io and k8s.io are Kubernetes' own, and some of them loosen a pod
        # (container.apparmor.security.beta.kubernetes.io/…: unconfined, the seccomp ones). A
        # deployment's labels and annotations go onto its pods: the platform sets those itself.
        for key in value:
            prefix = key.rpartition("/")[0].lower()
            if prefix.endswith(_KUBERNETES_DOMAINS):
                raise ValueError(f"{key!r}: keys under kubernetes.io and k8s.io are Kubernetes' own, not a deployment's")
        return value

    @field_validator("annotations")
    @classmethod
    def _not_the_runtimes(cls, value: dict[str, str]) -> dict[str, str]:
        # A pod's annotations reach its container runtime, and some of them loosen the pod
        # (a host user namespace, a host device): the platform sets those itself.
        for key in value:
            lowered = key.lower()
            domain = lowered.rpartition("/")[0] or lowered  # cpu-quota.crio.io has no slash
            if lowered.startswith(_RUNTIME_PREFIXES) or domain.endswith(_RUNTIME_DOMAINS):
                raise ValueError(f"{key!r}: keys under {', '.join(_RUNTIME_PREFIXES)} and {', '.join(_RUNTIME_DOMAINS)} "
                                 "are the container runtime's, not a deployment's")
        return value

    @field_validator("image")
    @classmethod
    def _valid_image(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("image must not be empty")
        return value

    def scaling(self) -> ScaleLabels:
        """Its scaling labels; a bad value is a BadRequest that names the label."""
        return ScaleLabels.from_labels(self.labels)

    def initial_replicas(self) -> int:
        try:
            return self.scaling().min
        except BadRequest:  # refused at deploy; only a function saved before that check is here
            return 1


# faas-provider's FunctionStatus fields tagged omitempty. labels and annotations are pointers
# to maps there, which Go writes whenever they are set (even empty): so always, here.
_STATUS_OMITEMPTY = frozenset({
    "namespace", "envProcess", "envVars", "constraints", "secrets", "limits", "requests",
    "readOnlyRootFilesystem", "invocationCount", "replicas", "availableReplicas", "startError",
})


class FunctionStatus(BaseModel):
    """One entry of ``GET /system/functions``; ``to_json`` gives what faas-provider's Go type
    would write."""

    name: str
    image: str
    namespace: str = DEFAULT_NAMESPACE
    envProcess: str | None = None
    envVars: dict[str, str] = Field(default_factory=dict)
    constraints: list[str] = Field(default_factory=list)
    secrets: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    limits: FunctionResources | None = None
    requests: FunctionResources | None = None
    readOnlyRootFilesystem: bool = False
    invocationCount: float = 0
    replicas: int = 0
    availableReplicas: int = 0
    createdAt: str = ""
    # streamfaas's own (Go clients ignore unknown keys): why the function's replicas fail to
    # start, the end of the function's traceback; left out while any is ready or starting.
    startError: str = ""

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["limits"] = _resources_json(self.limits)
        data["requests"] = _resources_json(self.requests)
        # A time.Time is a struct, which omitempty never omits: Go writes the zero time.
        created = dt.datetime.fromisoformat(self.createdAt) if self.createdAt else dt.datetime.min
        data["createdAt"] = go_time(created)
        return _omit_empty(data, _STATUS_OMITEMPTY)


class ScaleServiceRequest(GoRequest):
    serviceName: str = ""
    namespace: str = ""
    replicas: int = Field(ge=0, le=MAX_REPLICAS)


class DeleteFunctionRequest(GoRequest):
    functionName: str
    namespace: str = ""


class Secret(GoRequest):
    """Body of ``POST``/``PUT /system/secrets``: ``value`` (text) or ``rawValue`` (base64 bytes,
    which wins when both are set, as ``faas-cli secret create --from-file`` sends both)."""
    name: str
    namespace: str = ""
    value: str | None = None
    rawValue: str | None = None  # base64, as Go's encoding/json writes []byte


class SecretName(GoRequest):
    name: str
    namespace: str = ""
