"""The autoscaler's Prometheus metrics (OpenFaaS Pro's names where one means the same)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import StreamfaasError
from ..provider.base import Provider


class AutoscaleMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.target_load = Gauge(
            "gateway_service_target_load", "Load one replica is sized for (com.openfaas.scale.target), in its type's unit.",
            ["function_name", "scaling_type"], registry=registry,
        )
        self.desired = Gauge(
            "gateway_service_desired_replicas", "Replicas the autoscaler wants.", ["function_name"], registry=registry,
        )
        self.decisions = Counter(
            "streamfaas_autoscaler_decisions", "Replica changes the autoscaler made.", ["direction", "reason"],
            registry=registry,
        )

    def show(self, function_name: str, scaling_type: str, target: int, desired: int) -> None:
        self.target_load.labels(function_name=function_name, scaling_type=scaling_type).set(target)
        self.desired.labels(function_name=function_name).set(desired)

    def forget(self, function_name: str, scaling_type: str) -> None:
        """Drop the series of a function removed, or whose type changed."""
        with contextlib.suppress(KeyError):
            self.target_load.remove(function_name, scaling_type)
        with contextlib.suppress(KeyError):
            self.desired.remove(function_name)


class InflightCollector(Collector):
    """``gateway_function_inflight``: requests (streams) this gateway has open per function,
    read from the provider at each scrape, autoscaler or not."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("gateway_function_inflight", "Requests open per function (a stream counts for its whole life).",
                                   labels=["function_name"])
        for namespace in self.provider.namespaces():
            try:
                statuses = self.provider.statuses(namespace)
            except StreamfaasError:
                continue  # a namespace that cannot be read now
            default = namespace == self.provider.default_namespace
            for status in statuses:
                try:
                    load = self.provider.load(status.name, namespace)
                except StreamfaasError:
                    continue  # removed meanwhile
                family.add_metric([status.name if default else f"{status.name}.{namespace}"], load.inflight)
        yield family
