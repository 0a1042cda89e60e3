"""Gauges of the adaptive caps (``llm_throttle_adaptive_*``), refreshed at scrape time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge


class CapacityGauges:
    """One gauge family per controller field, labelled by resource (``upstream:vllm-a``)."""

    def __init__(self, registry: CollectorRegistry):
        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(f"llm_throttle_adaptive_{name}", doc, ["resource", *labels],
                         registry=registry)

        self.cap = gauge("cap", "Effective in-flight cap the adaptive controller set.")
        self.ceiling = gauge("ceiling", "Highest cap allowed now (configured, or engine slots).")
        self.floor = gauge("floor", "Lowest cap allowed (min_in_flight).")
        self.baseline = gauge("baseline_seconds", "No-load latency baseline.", "signal")
        self.current = gauge("current_seconds", "Latency of the last decision window.",
                             "signal")
        self.ratio = gauge("latency_ratio", "Last window's latency over the baseline.")
        self.engine_waiting = gauge("engine_waiting", "Requests queued inside the engine.")
        self.engine_kv = gauge("engine_kv_usage", "KV cache use the engine reports (0..1).")
        self.engine_age = gauge("engine_signal_age_seconds", "Age of the last engine signal.")
        self.change_age = gauge("last_change_age_seconds", "Seconds since the cap last moved.")

    def refresh(self, status: Mapping[str, Mapping[str, Any]]) -> None:
        for resource, s in status.items():
            self.cap.labels(resource).set(s["cap"])
            self.ceiling.labels(resource).set(s["ceiling"])
            self.floor.labels(resource).set(s["floor"])
            for signal in ("tpot_s", "ttft_s"):
                label = signal.removesuffix("_s")
                if s["baseline"][signal] is not None:
                    self.baseline.labels(resource, label).set(s["baseline"][signal])
                if s["current"][signal] is not None:
                    self.current.labels(resource, label).set(s["current"][signal])
            if s["current"]["ratio"] is not None:
                self.ratio.labels(resource).set(s["current"]["ratio"])
            engine = s.get("engine")
            if engine:
                self.engine_age.labels(resource).set(engine["age_s"])
                if engine["waiting"] is not None:
                    self.engine_waiting.labels(resource).set(engine["waiting"])
                if engine["kv_usage"] is not None:
                    self.engine_kv.labels(resource).set(engine["kv_usage"])
            self.change_age.labels(resource).set(s["last_change"]["age_s"])


def annotate(doc: dict[str, Any], status: Mapping[str, Mapping[str, Any]]) -> None:
    """Put each controller's state under its resource in the /throttle/status document."""
    groups = {"upstream": "upstreams", "gpu": "gpus"}
    for resource, s in status.items():
        kind, _, name = resource.partition(":")
        entry = doc.setdefault(groups[kind], {}).setdefault(name, {})
        entry["adaptive"] = dict(s)
