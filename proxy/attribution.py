"""Attribution values shown in metrics and status: a bounded set, the rest folded.

An attribution header (``attribution.header``) names a finer identity under a client key; its
values are chosen by the caller, so an unbounded number of them must not become an unbounded
number of metric series or status entries (10,000 values once grew ``/metrics`` from 6 KB to
3.8 MB, for good). ``AttributionLabels`` tracks at most ``max_values`` of them, most recently
seen first; a value seen while the set is full (and none in it idle past ``value_idle_s``) is
shown as ``<client>/other``. Idle values expire: their series are dropped at the next scrape.

Only what is *shown* is folded. Limits are untouched: every value keeps its own
``attr:<client>/<value>`` resource in the store, so a per-value cap holds for folded values too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from .auth import Identity
from .limits.base import ResourceState, Snapshot

OTHER = "other"
_PREFIX = "attr:"


class AttributionLabels:
    """Identity -> its label for metrics, status and the access log, with bounded values."""

    __slots__ = ("_clock", "_seen", "idle_s", "max_values")

    def __init__(self, max_values: int, idle_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.max_values = max_values
        self.idle_s = idle_s
        #: "client/value" -> last seen; insertion order is least recently seen first
        self._seen: dict[str, float] = {}
        self._clock = clock

    def __len__(self) -> int:
        return len(self._seen)

    def label(self, identity: Identity) -> str:
        if identity.attribute is None:
            return identity.name
        label = identity.label
        seen = self._seen
        now = self._clock()
        if label in seen:
            del seen[label]  # re-inserted below: most recently seen last
        elif len(seen) >= self.max_values:
            oldest = next(iter(seen))
            if now - seen[oldest] <= self.idle_s:
                return f"{identity.name}/{OTHER}"
            del seen[oldest]  # idle past its time: its place goes to the newcomer
        seen[label] = now
        return label

    def expire(self) -> list[str]:
        """Drop values idle past ``idle_s``; returns their labels (their series go too)."""
        now = self._clock()
        gone = []
        for label, last in self._seen.items():
            if now - last <= self.idle_s:
                break  # the rest were seen more recently
            gone.append(label)
        for label in gone:
            del self._seen[label]
        return gone

    def fold(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot with untracked ``attr:`` resources summed into ``attr:<client>/other``
        (idle ones left out), for status and metrics."""
        resources: dict[str, ResourceState] = {}
        other: dict[str, list[float]] = {}
        for name, state in snapshot.resources.items():
            if not name.startswith(_PREFIX) or name[len(_PREFIX):] in self._seen:
                resources[name] = state
                continue
            if not (state.in_flight or state.queued):
                continue
            key = f"{_PREFIX}{name[len(_PREFIX):].partition('/')[0]}/{OTHER}"
            total = other.setdefault(key, [0, 0, 0.0])
            total[0] += state.in_flight
            total[1] += state.queued
            total[2] = max(total[2], state.oldest_wait_s)
        for key, (in_flight, queued, oldest) in other.items():
            resources[key] = ResourceState(int(in_flight), None, int(queued), oldest)
        return dataclasses.replace(snapshot, resources=resources)
