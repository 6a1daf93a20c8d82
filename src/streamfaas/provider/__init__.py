"""Where functions run. ``local`` (processes on this machine) is the embedded default;
``kubernetes`` (the ``kubernetes`` extra) runs them as Deployments. Both implement
``base.Provider``."""

from __future__ import annotations

from ..config import GatewayConfig
from ..errors import ConfigError
from .base import DeployedFunction, Endpoint, Provider, SecretStore
from .images import ImageStore, LocalImage, normalise_image
from .local import LocalProvider
from .models import FunctionDeployment, FunctionStatus, ScaleServiceRequest
from .record import FunctionRecord


def create_provider(config: GatewayConfig) -> Provider:
    """The provider ``config.provider`` names, built from the gateway's settings."""
    if config.provider == "kubernetes":
        try:
            from .kubernetes import KubernetesProvider
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] != "kubernetes_asyncio":
                raise
            raise ConfigError(
                "--provider kubernetes needs the kubernetes extra: pip install 'streamfaas[kubernetes]'"
            ) from None
        return KubernetesProvider.from_config(config)
    return LocalProvider(config.state_dir, cold_start_timeout=config.cold_start_timeout, sandbox=config.sandbox)


__all__ = [
    "DeployedFunction",
    "Endpoint",
    "FunctionDeployment",
    "FunctionRecord",
    "FunctionStatus",
    "ImageStore",
    "LocalImage",
    "LocalProvider",
    "Provider",
    "ScaleServiceRequest",
    "SecretStore",
    "create_provider",
    "normalise_image",
]
