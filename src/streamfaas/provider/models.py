"""The provider API's JSON shapes, named as in OpenFaaS's faas-provider types."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DEFAULT_NAMESPACE = "openfaas-fn"

# Labels OpenFaaS users set to steer scaling; we honour the same names.
LABEL_SCALE_MIN = "com.openfaas.scale.min"


def check_name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ValueError(
            f"invalid function name {value!r}: use lowercase letters, digits and '-', at most 63"
        )
    return value


class FunctionResources(BaseModel):
    model_config = ConfigDict(extra="ignore")
    memory: str | None = None
    cpu: str | None = None


class FunctionDeployment(BaseModel):
    """Body of ``POST``/``PUT /system/functions``."""

    model_config = ConfigDict(extra="ignore")

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

    def initial_replicas(self) -> int:
        raw = self.labels.get(LABEL_SCALE_MIN, "1")
        try:
            return max(int(raw), 0)
        except ValueError:
            return 1


class FunctionStatus(BaseModel):
    """One entry of ``GET /system/functions``."""

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


class ScaleServiceRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    serviceName: str = ""
    namespace: str = ""
    replicas: int = Field(ge=0, le=1000)


class DeleteFunctionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    functionName: str
    namespace: str = ""


class Secret(BaseModel):
    """Body of ``POST``/``PUT /system/secrets``: ``value`` (text) or ``rawValue`` (base64 bytes)."""

    model_config = ConfigDict(extra="ignore")
    name: str
    namespace: str = ""
    value: str | None = None
    rawValue: str | None = None  # base64, as Go's encoding/json writes []byte


class SecretName(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    namespace: str = ""
