"""Prometheus metrics (prefix ``llm_throttle_``), one registry per proxy instance.

Per-request counters and histograms are plain Python numbers (``LightCounter``,
``LightHistogram``) exported by one collector at scrape time: prometheus_client's own take a
lock and re-check labels on every update, which showed on the request path. The event loop
is the only writer, so no lock is needed. The state gauges (in flight, cap, queue depth) are
refreshed from a store snapshot when ``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

from .limits.base import Priority, Snapshot
from .record import RequestRecord
from .version import package_version, python_version

RESOURCE_LABELS = ("kind", "name")
BUCKET_LABELS = ("limit", "kind", "name")


def resource_labels(resource: str) -> tuple[str, str]:
    """``gpu:h100-0`` -> (``gpu``, ``h100-0``); a name without a kind gets kind ``other``."""
    kind, sep, name = resource.partition(":")
    return (kind, name) if sep else ("other", resource)


def bucket_labels(bucket: str) -> tuple[str, str, str]:
    """``tpm:model:qwen`` -> (``tpm``, ``model``, ``qwen``)."""
    limit, _, rest = bucket.partition(":")
    return (limit, *resource_labels(rest))


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class LightCounter:
    """A labelled counter without locks (single-threaded event loop)."""

    def __init__(self, name: str, documentation: str, labelnames: list[str]):
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.children: dict[tuple[str, ...], _CounterChild] = {}

    def labels(self, *values: str) -> _CounterChild:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = _CounterChild()
        return child

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name.removesuffix("_total"), self.documentation,
                                     labels=self.labelnames)
        for values, child in self.children.items():
            family.add_metric(list(values), child.value)
        return family


class LightHistogram:
    """A labelled histogram without locks (single-threaded event loop)."""

    def __init__(self, name: str, documentation: str, labelnames: list[str],
                 buckets: tuple[float, ...]):
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.buckets = tuple(sorted(buckets))
        self.children: dict[tuple[str, ...], _HistogramChild] = {}

    def labels(self, *values: str) -> _HistogramChild:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = _HistogramChild(self.buckets)
        return child

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            cumulative, running = [], 0
            for bound, count in zip((*map(floatToGoString, self.buckets), "+Inf"), child.counts):
                running += count
                cumulative.append((bound, running))
            family.add_metric(list(values), cumulative, child.sum)
        return family


@dataclass(frozen=True, slots=True)
class RequestSeries:
    """The series one kind of admitted request (model, client, priority) updates, looked up
    once per kind instead of one label lookup per update."""

    queue_wait: _HistogramChild
    prompt_tokens: _CounterChild
    completion_tokens: _CounterChild


class _LightCollector:
    def __init__(self, metrics: list[LightCounter | LightHistogram]):
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for metric in self._metrics:
            yield metric.collect()


class ProxyMetrics:
    """All metric families of one proxy, on their own registry (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # kind (model, upstream, gpu, client, attr) and name are separate labels, so a query
        # selects kind="gpu" without a regex on a packed "gpu:h100-0"
        self.in_flight = Gauge("llm_throttle_in_flight", "Requests holding a permit",
                               RESOURCE_LABELS, registry=r)
        self.cap = Gauge("llm_throttle_cap", "In-flight cap (absent: unlimited)",
                         RESOURCE_LABELS, registry=r)
        self.queued = Gauge("llm_throttle_queue_depth", "Requests waiting, by resource",
                            RESOURCE_LABELS, registry=r)
        # a gauge: no _total suffix (that is for counters; promtool refuses it)
        self.queue_total = Gauge("llm_throttle_queue_requests", "Requests waiting, all together",
                                 registry=r)
        self.oldest_wait = Gauge("llm_throttle_queue_oldest_wait_seconds",
                                 "Age of the oldest waiter", registry=r)
        self.bucket_level = Gauge("llm_throttle_bucket_level", "Tokens left in a rate bucket",
                                  BUCKET_LABELS, registry=r)
        self.bucket_capacity = Gauge("llm_throttle_bucket_capacity",
                                     "Size of a rate bucket (its burst)", BUCKET_LABELS,
                                     registry=r)
        self.store_degraded = Gauge("llm_throttle_store_degraded",
                                    "1 while the shared store is unreachable", registry=r)
        Gauge("llm_throttle_build_info", "Always 1; the labels say what runs",
              ["version", "python"], registry=r).labels(package_version(), python_version()).set(1)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes..
        PlatformCollector(registry=r)  # python_info
        self.queue_wait = LightHistogram("llm_throttle_queue_wait_seconds",
                                         "Time spent queued before admission",
                                         ["model", "priority"], _LATENCY_BUCKETS)
        self.requests = LightCounter("llm_throttle_requests_total", "Requests answered",
                                     ["model", "client", "status"])
        self.rejections = LightCounter("llm_throttle_rejections_total",
                                       "Requests refused by the proxy", ["model", "reason"])
        self.tokens = LightCounter("llm_throttle_tokens_total", "LLM tokens used",
                                   ["model", "client", "kind"])
        self.upstream_latency = LightHistogram("llm_throttle_upstream_latency_seconds",
                                               "Upstream time to response headers",
                                               ["upstream"], _LATENCY_BUCKETS)
        self.upstream_errors = LightCounter("llm_throttle_upstream_errors_total",
                                            "Upstream failures and throttling answers",
                                            ["upstream", "reason"])
        self.ttft = LightHistogram("llm_throttle_time_to_first_token_seconds",
                                   "Arrival at the proxy to first streamed byte to the client",
                                   ["model"], _LATENCY_BUCKETS)
        r.register(_LightCollector([  # type: ignore[arg-type]
            self.queue_wait, self.requests, self.rejections, self.tokens,
            self.upstream_latency, self.upstream_errors, self.ttft,
        ]))

        self._children: dict[tuple[object, ...], Any] = {}
        self._series: dict[tuple[str, str, Priority], RequestSeries] = {}
        #: resources of the last refresh: one gone from the store loses its gauges
        self._resources: set[str] = set()

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: the request path skips prometheus' lock+lookup."""
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def for_request(self, model: str, client: str, priority: Priority) -> RequestSeries:
        key = (model, client, priority)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = RequestSeries(
                self.queue_wait.labels(model, priority.name.lower()),
                self.tokens.labels(model, client, "prompt"),
                self.tokens.labels(model, client, "completion"))
        return found

    def answered(self, model: str, client: str, status: int) -> None:
        self.child(self.requests, model, client, str(status)).inc()

    def observe(self, record: RequestRecord) -> None:
        """Everything one answered request adds, from its record (called once per request)."""
        model, client = record.model, record.client
        self.answered(model, client, record.status)
        if record.rejected is not None:
            self.child(self.rejections, model, record.rejected).inc()
        if record.upstream_failure is not None and record.upstream is not None:
            self.upstream_error(record.upstream, record.upstream_failure)
        if record.upstream_s is not None:
            self.child(self.upstream_latency, record.upstream).observe(record.upstream_s)
        if record.priority is not None and record.queue_s is not None:
            seen = self.for_request(model, client, record.priority)
            seen.queue_wait.observe(record.queue_s)
            if record.tokens is not None:
                seen.prompt_tokens.inc(record.tokens[0])
                seen.completion_tokens.inc(record.tokens[1])
        if record.first_byte_at is not None:
            self.child(self.ttft, model).observe(record.first_byte_at - record.arrival)

    def upstream_error(self, upstream: str, reason: str) -> None:
        self.child(self.upstream_errors, upstream, reason).inc()

    def forget_clients(self, labels: Iterable[str]) -> None:
        """Drop every series of these client labels (attribution values gone idle)."""
        gone = set(labels)
        if not gone:
            return
        for metric in (self.requests, self.tokens):
            for key in [k for k in metric.children if k[1] in gone]:
                del metric.children[key]
        self._children = {k: v for k, v in self._children.items()
                          if not (k[0] is self.requests and k[2] in gone)}
        self._series = {k: v for k, v in self._series.items() if k[1] not in gone}

    def refresh(self, snapshot: Snapshot) -> None:
        """Bring the state gauges up to date from a store snapshot; resources no longer in it
        lose their series (so folded or expired attribution values do not linger)."""
        names = set(snapshot.resources)
        for stale in self._resources - names:
            for gauge in (self.in_flight, self.queued, self.cap):
                try:
                    gauge.remove(*resource_labels(stale))
                except KeyError:
                    pass
        self._resources = names
        for name, state in snapshot.resources.items():
            labels = resource_labels(name)
            self.in_flight.labels(*labels).set(state.in_flight)
            self.queued.labels(*labels).set(state.queued)
            if state.cap is not None:
                self.cap.labels(*labels).set(state.cap)
        for name, bucket in snapshot.buckets.items():
            labels = bucket_labels(name)
            self.bucket_level.labels(*labels).set(bucket.level)
            self.bucket_capacity.labels(*labels).set(bucket.capacity)
        self.queue_total.set(snapshot.queue_depth)
        self.oldest_wait.set(snapshot.oldest_wait_s)
        self.store_degraded.set(1 if snapshot.degraded else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
