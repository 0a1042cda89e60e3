"""Per-flow fair-share figures for people: Prometheus series and the last minute's shares.

A flow (``proxy/limits/fairness.py``) is a client, or an attribution value under one, so there
may be thousands: like attribution values the series are bounded, the busiest
``MAX_FLOW_SERIES`` (most queued, then most served; the store's snapshot is already sorted so)
each with its own labels, the rest summed into ``flow="other"`` of their class.

The share of the last minute is this host's view (as ``admitted_per_s``): tokens its admitted
requests used (the real usage, else the reservation) per flow over 60 s, against all flows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .limits.base import FlowState
from .status import RateWindow

#: flows with their own series; the rest are folded into ``<class>:other``
MAX_FLOW_SERIES = 50
#: flows whose last minute is tracked; more fold into ``<class>:other``
MAX_TRACKED_FLOWS = 1024
OTHER = "other"


def _split(key: str) -> tuple[str, str]:
    """``batch:alice`` -> (``batch``, ``alice``)."""
    klass, _, flow = key.partition(":")
    return klass, flow


def folded(flows: Mapping[str, FlowState], limit: int = MAX_FLOW_SERIES
           ) -> dict[tuple[str, str], tuple[float, float, float | None]]:
    """(class, flow) -> (queued, served, counter): the first ``limit`` flows as they are, the
    rest summed per class into ``other`` (whose counter, a per-flow figure, is None)."""
    out: dict[tuple[str, str], tuple[float, float, float | None]] = {}
    for i, (key, state) in enumerate(flows.items()):
        klass, flow = _split(key)
        if i < limit and flow != OTHER:
            out[(klass, flow)] = (state.queued, state.served, state.counter)
            continue
        queued, served, _ = out.get((klass, OTHER), (0, 0.0, None))
        out[(klass, OTHER)] = (queued + state.queued, served + state.served, None)
    return out


class FlowCollector:
    """The per-flow families, from the flows of the last snapshot (``update`` at scrape)."""

    def __init__(self) -> None:
        self._flows: Mapping[str, FlowState] = {}

    def update(self, flows: Mapping[str, FlowState]) -> None:
        self._flows = flows

    def collect(self) -> Iterator[Metric]:
        labels = ["class", "flow"]
        queued = GaugeMetricFamily("llm_throttle_flow_queued",
                                   "Requests of a flow waiting (busiest flows; rest: other)",
                                   labels=labels)
        counter = GaugeMetricFamily("llm_throttle_flow_virtual_tokens",
                                    "A flow's fair-share (virtual token) counter: "
                                    "tokens served / weight",
                                    labels=labels)
        served = CounterMetricFamily("llm_throttle_flow_served_tokens",
                                     "Tokens served to a flow since the store started",
                                     labels=labels)
        for (klass, flow), (q, s, c) in folded(self._flows).items():
            queued.add_metric([klass, flow], q)
            served.add_metric([klass, flow], s)
            if c is not None:
                counter.add_metric([klass, flow], c)
        yield queued
        yield counter
        yield served


class FlowShares:
    """Tokens per flow over the last minute on this host, for the status document."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._windows: dict[str, RateWindow] = {}

    def add(self, klass: str, flow: str, tokens: float) -> None:
        key = f"{klass}:{flow}"
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= MAX_TRACKED_FLOWS:
                self._forget_idle()
            if len(self._windows) >= MAX_TRACKED_FLOWS:
                key = f"{klass}:{OTHER}"
                window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = RateWindow(clock=self._clock)
        window.add(max(0, round(tokens)))

    def _forget_idle(self) -> None:
        for key in [k for k, w in self._windows.items() if w.rate() == 0]:
            del self._windows[key]

    def shares(self) -> dict[str, float]:
        """``<class>:<flow>`` -> its fraction of all tokens served in the last minute."""
        rates = {key: w.rate() for key, w in self._windows.items()}
        total = sum(rates.values())
        if total <= 0:
            return {}
        return {key: round(rate / total, 4) for key, rate in rates.items() if rate > 0}
