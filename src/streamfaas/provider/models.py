"""The provider API's JSON shapes, named as in OpenFaaS's faas-provider types.

Requests are read as Go's ``encoding/json`` reads them into those types: unknown keys are
ignored and ``null`` leaves a field at its zero value. Responses leave out what Go leaves out:
an ``omitempty`` field whose value is empty.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import BadRequest

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DEFAULT_NAMESPACE = "openfaas-fn"

# Labels OpenFaaS users set to steer scaling; we honour the same names.
LABEL_SCALE_MIN = "com.openfaas.scale.min"
LABEL_SCALE_MAX = "com.openfaas.scale.max"
LABEL_SCALE_ZERO = "com.openfaas.scale.zero"
MAX_REPLICAS = 1000  # what /system/scale-function takes at most


@dataclass(frozen=True)
class ScaleLabels:
    """A function's scaling labels, read once per deployment.

    ``min``: replicas at the first deploy, and when a request starts a function scaled to zero
    (at least 1 then); ``max``: the most replicas a scale request gets (more is clamped to it);
    ``zero``: the function may be scaled to zero when idle (recorded for an idler; scaling to
    zero by hand is always allowed). ``min == max`` turns scaling off, as on OpenFaaS.
    """

    min: int = 1
    max: int = MAX_REPLICAS
    zero: bool = False

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> ScaleLabels:
        """Read the labels; a bad value is a BadRequest that names the label."""
        minimum = _replicas_label(labels, LABEL_SCALE_MIN, default=1, lowest=0)
        maximum = _replicas_label(labels, LABEL_SCALE_MAX, default=MAX_REPLICAS, lowest=1)
        if minimum > maximum:
            raise BadRequest(
                f"labels: {LABEL_SCALE_MIN} ({minimum}) is more than {LABEL_SCALE_MAX} ({maximum})"
            )
        zero = labels.get(LABEL_SCALE_ZERO)
        if zero is not None and zero.strip().lower() not in _BOOLEANS:
            raise BadRequest(f"labels: {LABEL_SCALE_ZERO}: expected true or false, got {zero!r}")
        return cls(min=minimum, max=maximum, zero=zero is not None and _BOOLEANS[zero.strip().lower()])

    def clamp(self, replicas: int) -> int:
        """What a request for ``replicas`` gets: at most ``max`` (0 stays allowed)."""
        return min(replicas, self.max)

    @property
    def wake(self) -> int:
        """Replicas to start when a request finds none (OpenFaaS scales from zero to min)."""
        return min(max(self.min, 1), self.max)


_DIGITS = re.compile(r"[0-9]{1,9}")
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _replicas_label(labels: dict[str, str], key: str, *, default: int, lowest: int) -> int:
    raw = labels.get(key)
    if raw is None:
        return default
    value = int(raw.strip()) if _DIGITS.fullmatch(raw.strip()) else -1
    if not lowest <= value <= MAX_REPLICAS:
        raise BadRequest(f"labels: {key}: expected a whole number from {lowest} to {MAX_REPLICAS}, got {raw!r}")
    return value


def check_name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ValueError(
            f"invalid function name {value!r}: use lowercase letters, digits and '-', at most 63"
        )
    return value


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
