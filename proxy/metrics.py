"""Prometheus metrics (prefix ``llm_throttle_``), one registry per proxy instance.

Per-request metrics are counters and histograms updated on the request path through cached
label children; the state gauges (in flight, cap, queue depth) are refreshed from a store
snapshot when ``/metrics`` is scraped, so the request path never touches them.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from .limits.base import Snapshot

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ProxyMetrics:
    """All metric families of one proxy, on their own registry (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.in_flight = Gauge("llm_throttle_in_flight", "Requests holding a permit",
                               ["resource"], registry=r)
        self.cap = Gauge("llm_throttle_cap", "In-flight cap (absent: unlimited)",
                         ["resource"], registry=r)
        self.queued = Gauge("llm_throttle_queue_depth", "Requests waiting, by resource",
                            ["resource"], registry=r)
        self.queue_total = Gauge("llm_throttle_queue_depth_total", "Requests waiting", registry=r)
        self.oldest_wait = Gauge("llm_throttle_queue_oldest_wait_seconds",
                                 "Age of the oldest waiter", registry=r)
        self.bucket_level = Gauge("llm_throttle_bucket_level", "Tokens left in a rate bucket",
                                  ["bucket"], registry=r)
        self.store_degraded = Gauge("llm_throttle_store_degraded",
                                    "1 while the shared store is unreachable", registry=r)
        self.queue_wait = Histogram("llm_throttle_queue_wait_seconds",
                                    "Time spent queued before admission",
                                    ["model", "priority"], buckets=_LATENCY_BUCKETS, registry=r)
        self.requests = Counter("llm_throttle_requests_total", "Requests answered",
                                ["model", "client", "status"], registry=r)
        self.rejections = Counter("llm_throttle_rejections_total",
                                  "Requests refused by the proxy", ["model", "reason"], registry=r)
        self.tokens = Counter("llm_throttle_tokens_total", "LLM tokens used",
                              ["model", "client", "kind"], registry=r)
        self.upstream_latency = Histogram("llm_throttle_upstream_latency_seconds",
                                          "Upstream time to response headers",
                                          ["upstream"], buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_errors = Counter("llm_throttle_upstream_errors_total",
                                       "Upstream failures and throttling answers",
                                       ["upstream", "reason"], registry=r)
        self.ttft = Histogram("llm_throttle_time_to_first_token_seconds",
                              "Arrival at the proxy to first streamed byte to the client",
                              ["model"], buckets=_LATENCY_BUCKETS, registry=r)

        self._children: dict[tuple[object, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: the request path skips prometheus' lock+lookup."""
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def refresh(self, snapshot: Snapshot) -> None:
        """Bring the state gauges up to date from a store snapshot."""
        for name, state in snapshot.resources.items():
            self.in_flight.labels(name).set(state.in_flight)
            self.queued.labels(name).set(state.queued)
            if state.cap is not None:
                self.cap.labels(name).set(state.cap)
        for name, bucket in snapshot.buckets.items():
            self.bucket_level.labels(name).set(bucket.level)
        self.queue_total.set(snapshot.queue_depth)
        self.oldest_wait.set(snapshot.oldest_wait_s)
        self.store_degraded.set(1 if snapshot.degraded else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
