"""`GET /metrics`: the server's figures in Prometheus' text format, read at each scrape
from the same counters as GetServerStats (gRPC and HTTP requests together).

    gantry_serve_requests_total            requests received (counter)
    gantry_serve_request_errors_total      requests refused or failed (counter)
    gantry_serve_completion_tokens_total   tokens generated (counter)
    gantry_serve_prompt_tokens_total       prompt tokens of completed requests (counter)
    gantry_serve_prompt_tokens_cached_total  of them, found in the prefix cache (counter)
    gantry_serve_request_latency_seconds   received to last token, completed requests
    gantry_serve_queue_depth               requests waiting for a place in the batch
    gantry_serve_running_requests          requests in the running batch
    gantry_serve_batch_size                sequences per decode step (histogram)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent.serve.stats import LATENCY_BUCKETS_S, ServerStats

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _bound(value: float) -> str:
    return f"{value:g}"


class ServeCollector(Collector):
    def __init__(self, stats: ServerStats, load: Callable[[], tuple[int, int]]) -> None:
        self._stats = stats
        self._load = load  # (queued, running); (0, 0) while the model loads

    def collect(self) -> Iterator[Metric]:
        snap = self._stats.snapshot()
        queued, running = self._load()
        yield CounterMetricFamily(
            "gantry_serve_requests", "Requests received", value=snap.requests_total
        )
        yield CounterMetricFamily(
            "gantry_serve_request_errors", "Requests refused or failed", value=snap.errors_total
        )
        yield CounterMetricFamily(
            "gantry_serve_completion_tokens", "Tokens generated", value=snap.tokens_total
        )
        yield CounterMetricFamily(
            "gantry_serve_prompt_tokens",
            "Prompt tokens of completed requests",
            value=snap.prompt_tokens_total,
        )
        yield CounterMetricFamily(
            "gantry_serve_prompt_tokens_cached",
            "Of them, found in the prefix cache (vLLM: prefix_cache_hits)",
            value=snap.cached_prompt_tokens_total,
        )
        cumulative, buckets = 0, []
        counts = snap.latency_counts or (0,) * (len(LATENCY_BUCKETS_S) + 1)
        for bound, count in zip(LATENCY_BUCKETS_S, counts, strict=False):
            cumulative += count
            buckets.append((_bound(bound), cumulative))
        buckets.append(("+Inf", sum(counts)))
        yield HistogramMetricFamily(
            "gantry_serve_request_latency_seconds",
            "Received to last token, completed requests",
            buckets=buckets,
            sum_value=snap.latency_sum_s,
        )
        yield GaugeMetricFamily("gantry_serve_queue_depth", "Requests waiting", value=queued)
        yield GaugeMetricFamily(
            "gantry_serve_running_requests", "Requests in the running batch", value=running
        )
        steps = snap.batch_size_histogram
        batch_buckets = [
            (_bound(b), sum(n for size, n in steps.items() if size <= b)) for b in BATCH_BUCKETS
        ]
        batch_buckets.append(("+Inf", sum(steps.values())))
        yield HistogramMetricFamily(
            "gantry_serve_batch_size",
            "Sequences per decode step",
            buckets=batch_buckets,
            sum_value=sum(size * n for size, n in steps.items()),
        )


def metrics_registry(stats: ServerStats, load: Callable[[], tuple[int, int]]) -> CollectorRegistry:
    """A registry of its own: two servers in one process do not share figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServeCollector(stats, load))
    return registry


def metrics_text(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
