"""Gauges of the adaptive caps (``llm_throttle_adaptive_*``), refreshed at scrape time.

Labelled ``kind`` (``upstream`` or ``gpu``) and ``name``, like the proxy's other resource
gauges; a value not known yet (no window closed, no engine signal) is NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge


class CapacityGauges:
    """One gauge family per controller field, labelled by resource (``upstream:vllm-a``)."""

    def __init__(self, registry: CollectorRegistry):
        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(f"llm_throttle_adaptive_{name}", doc, ["kind", "name", *labels],
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
        nan = float("nan")

        def value(v: float | None) -> float:
            return nan if v is None else v

        for resource, s in status.items():
            key = tuple(resource.split(":", 1))
            self.cap.labels(*key).set(s["cap"])
            self.ceiling.labels(*key).set(s["ceiling"])
            self.floor.labels(*key).set(s["floor"])
            for signal in ("tpot_s", "ttft_s"):
                label = signal.removesuffix("_s")
                self.baseline.labels(*key, label).set(value(s["baseline"][signal]))
                self.current.labels(*key, label).set(value(s["current"][signal]))
            self.ratio.labels(*key).set(value(s["current"]["ratio"]))
            engine = s.get("engine") or {}
            self.engine_age.labels(*key).set(value(engine.get("age_s")))
            self.engine_waiting.labels(*key).set(value(engine.get("waiting")))
            self.engine_kv.labels(*key).set(value(engine.get("kv_usage")))
            self.change_age.labels(*key).set(s["last_change"]["age_s"])


def annotate(doc: dict[str, Any], status: Mapping[str, Mapping[str, Any]]) -> None:
    """Put each controller's state under its resource in the /throttle/status document."""
    groups = {"upstream": "upstreams", "gpu": "gpus"}
    for resource, s in status.items():
        kind, _, name = resource.partition(":")
        entry = doc.setdefault(groups[kind], {}).setdefault(name, {})
        entry["adaptive"] = dict(s)
