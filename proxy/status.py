"""The backlog view published to dispatchers and people: ``GET /throttle/status``.

``saturated`` has hysteresis so a dispatcher reading it does not flap: a resource becomes
saturated when it is at its cap with requests queued, and stops being saturated only once its
queue is empty and it has dropped to three quarters of its cap.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from .limits.base import LimitSpec, ResourceState, Snapshot
from .status_view import render_blocked, render_buckets

_GROUPS = {"model": "models", "upstream": "upstreams", "gpu": "gpus", "client": "clients",
           "attr": "attributed"}


class RateWindow:
    """Events per second over a sliding window, in one-second slots."""

    __slots__ = ("window_s", "_slots", "_clock")

    def __init__(self, window_s: int = 60, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._slots: deque[list[float]] = deque()  # [second, count]
        self._clock = clock

    def add(self, n: int = 1) -> None:
        second = math.floor(self._clock())
        if self._slots and self._slots[-1][0] == second:
            self._slots[-1][1] += n
        else:
            self._slots.append([second, n])
            self._trim(second)

    def rate(self) -> float:
        self._trim(math.floor(self._clock()))
        return sum(count for _, count in self._slots) / self.window_s

    def _trim(self, now: float) -> None:
        while self._slots and self._slots[0][0] <= now - self.window_s:
            self._slots.popleft()


class SaturationTracker:
    """Remembers which resources are saturated, to apply hysteresis between reads."""

    def __init__(self) -> None:
        self._saturated: set[str] = set()

    def update(self, name: str, state: ResourceState) -> bool:
        if state.cap is None:
            saturated = False
        elif name in self._saturated:
            saturated = state.queued > 0 or state.in_flight > 0.75 * state.cap
        else:
            saturated = state.in_flight >= state.cap and state.queued > 0
        (self._saturated.add if saturated else self._saturated.discard)(name)
        return saturated


class RequestRates:
    """Admitted and rejected request rates per model (this host's view)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.admitted: dict[str, RateWindow] = {}
        self.rejected: dict[str, RateWindow] = {}

    def count(self, table: dict[str, RateWindow], model: str) -> None:
        window = table.get(model)
        if window is None:
            window = table[model] = RateWindow(clock=self._clock)
        window.add()


def attribution_listed(spec: LimitSpec) -> bool:
    """Whether every attributed request is a store resource (a capped attribution: the
    ``attr:`` prefix cap), so the status lists each one, queued or in flight."""
    return "attr:" in spec.prefix_caps


def status_document(
    snapshot: Snapshot, saturation: SaturationTracker, rates: RequestRates,
    max_depth: int, max_wait_s: float, *, attribution_listed: bool = False,
) -> dict[str, Any]:
    """The JSON status: per model, upstream, GPU and client. ``attribution_listed``: every
    attributed request is under ``attributed`` (a capped attribution), so an empty table
    means none -- a dispatcher can then tell outside traffic from its workers'."""
    doc: dict[str, Any] = {
        "store": snapshot.store,
        "attribution_listed": attribution_listed,
        "degraded": snapshot.degraded,
        "degraded_reason": snapshot.degraded_reason,
        "hosts": snapshot.hosts,
        "queue": {
            "depth": snapshot.queue_depth,
            "max_depth": max_depth,
            "max_wait_s": max_wait_s,
            "oldest_wait_s": round(snapshot.oldest_wait_s, 3),
        },
    }
    for group in _GROUPS.values():
        doc[group] = {}
    for name, state in sorted(snapshot.resources.items()):
        kind, _, short = name.partition(":")
        group = _GROUPS.get(kind)
        if group is None:
            continue
        entry: dict[str, Any] = {
            "in_flight": state.in_flight,
            "cap": state.cap,
            "queued": state.queued,
            "oldest_wait_s": round(state.oldest_wait_s, 3),
            "saturated": saturation.update(name, state),
        }
        if kind == "model":
            entry["admitted_per_s"] = _rate(rates.admitted, short)
            entry["rejected_per_s"] = _rate(rates.rejected, short)
        doc[group][short] = entry
    doc["buckets"] = {
        name: {"level": round(b.level, 2), "capacity": b.capacity,
               "rate_per_s": round(b.rate_per_s, 4)}
        for name, b in sorted(snapshot.buckets.items())
    }
    doc["flows"] = {  # fair share per flow, bounded (see proxy/limits/fairness.py)
        name: {"queued": f.queued, "counter": f.counter, "served_tokens": f.served}
        for name, f in snapshot.flows.items()
    }
    return doc


def _rate(table: Mapping[str, RateWindow], model: str) -> float:
    window = table.get(model)
    return round(window.rate(), 3) if window else 0.0


def render_table(doc: Mapping[str, Any]) -> str:
    """A fixed-width table of the status document, for ``llm-throttle status``."""
    queue = doc.get("queue", {})
    lines = [
        (f"store: {doc.get('store')}   hosts: {doc.get('hosts', 1)}   "
         f"degraded: {'YES' if doc.get('degraded') else 'no'}   "
         f"queued: {queue.get('depth', 0)}   oldest wait: {queue.get('oldest_wait_s', 0):.1f}s"),
        "",
        f"{'RESOURCE':<32} {'IN FLIGHT':>9} {'CAP':>6} {'QUEUED':>7} {'OLDEST':>8}  SATURATED",
    ]
    for group in _GROUPS.values():
        for name, entry in (doc.get(group) or {}).items():
            cap = "-" if entry.get("cap") is None else str(entry["cap"])
            label = f"{group.removesuffix('s')}:{name}"
            lines.append(
                f"{label:<32} {entry.get('in_flight', 0):>9} {cap:>6} "
                f"{entry.get('queued', 0):>7} {entry.get('oldest_wait_s', 0):>7.1f}s  "
                f"{'yes' if entry.get('saturated') else ''}"
            )
    return "\n".join(lines + render_buckets(doc) + render_blocked(doc))
