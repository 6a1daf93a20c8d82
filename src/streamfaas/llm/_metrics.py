"""``GET /metrics`` of the model server: Prometheus names after vLLM's (``vllm:…`` becomes
``streamfaas_llm_…``, as a colon is for recording rules), so its dashboards carry over.

The latency histograms are fed by the worker threads, once per streamed chunk (llama.cpp may
hold text back and send two tokens in one). Everything else is read from the scheduler at
scrape time, at no cost per request."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ._scheduler import Scheduler

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
PREFIX = "streamfaas_llm_"


class LLMMetrics:
    def __init__(self, model: str, scheduler: Callable[[], Scheduler | None]) -> None:
        self.registry = CollectorRegistry()
        self._model = model
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time from a request's arrival (queue wait included) to its first streamed token.",
            ["model_name"],
            registry=self.registry,
            buckets=_TTFT_BUCKETS,
        ).labels(model_name=model)
        self.itl = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Time between two streamed chunks of one generation (a chunk is usually one token).",
            ["model_name"],
            registry=self.registry,
            buckets=_ITL_BUCKETS,
        ).labels(model_name=model)
        self.registry.register(_SchedulerCollector(model, scheduler))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SchedulerCollector(Collector):
    def __init__(self, model: str, scheduler: Callable[[], Scheduler | None]) -> None:
        self._model = model
        self._scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        scheduler = self._scheduler()
        if scheduler is None:  # still loading, or stopped
            return
        stats = scheduler.stats()
        values: list[tuple[type[GaugeMetricFamily] | type[CounterMetricFamily], str, str, float]] = [
            (GaugeMetricFamily, "num_requests_running", "Requests generating now.", stats["active_generations"]),
            (GaugeMetricFamily, "num_requests_waiting", "Requests waiting for a slot.", stats["queued"]),
            (CounterMetricFamily, "prompt_tokens", "Prompt tokens of finished requests.", scheduler.prompt_tokens_total),
            (CounterMetricFamily, "generation_tokens", "Tokens generated.", stats["tokens_generated_total"]),
            (CounterMetricFamily, "requests_rejected", "Requests refused with 429: every slot and queue place taken.",
             stats["rejected_total"]),
        ]
        for kind, name, help_text, value in values:
            family = kind(PREFIX + name, help_text, labels=["model_name"])
            family.add_metric([self._model], value)
            yield family


METRICS = web.AppKey("llm_metrics", LLMMetrics)


async def metrics_endpoint(request: web.Request) -> web.Response:
    resp = web.Response(body=request.app[METRICS].render())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp
