"""The kubernetes provider (``streamfaas gateway --provider kubernetes``): functions as
Deployments and Services, faas-netes-shaped, with requests routed straight to ready pods."""

from .provider import KubernetesProvider

__all__ = ["KubernetesProvider"]
