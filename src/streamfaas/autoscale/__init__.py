"""Autoscaling on concurrency (issue #13): ``policy`` sizes a function from its load windows,
``loop`` runs one round per interval through the ``Provider`` protocol, ``metrics`` exposes
what it decided. See ``loop.py`` for the interfaces a provider or a cluster plugs in."""

from __future__ import annotations

from .loop import Autoscaler, LoadSource, ProviderLoad
from .metrics import AutoscaleMetrics, InflightCollector
from .policy import Decision, FunctionPolicy, Windows

__all__ = ["AutoscaleMetrics", "Autoscaler", "Decision", "FunctionPolicy", "InflightCollector", "LoadSource",
           "ProviderLoad", "Windows"]
