"""The memory store's state, shared by the modules that make it up (see ``memory``).

``MemoryStore`` is assembled like ``RedisStore``: admission, release and the queue in
``memory``, live caps and reloads in ``memory_caps``, snapshots in ``memory_snapshot``. Each
part subclasses ``MemoryStoreCore``, which holds every field and declares the one call the
parts make of one another, so each module reads on its own.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable

from .base import Demand, Grant, LimitSpec, LimitStore, Priority
from .bucket import TokenBucket
from .fairness import FairQueue
from .wakeup import EarliestWakeup


class Waiter:
    """One queued request: its demand, the future a grant resolves, its arrival."""

    __slots__ = ("demand", "enqueued_at", "future", "gone", "seq", "touches")

    def __init__(self, demand: Demand, future: asyncio.Future[Grant], now: float, seq: int):
        self.demand = demand
        self.future = future
        self.enqueued_at = now
        self.seq = seq  # arrival order
        self.gone = False  # left the queue (granted, gave up)
        #: every resource and bucket this waiter could need (for per-resource queue counts)
        self.touches = touched(demand)


def touched(demand: Demand) -> tuple[str, ...]:
    """Every resource and bucket ``demand`` could need, in order, once each."""
    seen = dict.fromkeys(demand.resources)
    for option in demand.options:
        seen.update(dict.fromkeys(option.resources))
    return tuple(seen)


class MemoryStoreCore(LimitStore):
    """Fields of one process's limits; the parts (``memory*``) add the behaviour."""

    name = "memory"

    def __init__(self, spec: LimitSpec, clock: Callable[[], float] = time.monotonic):
        super().__init__(spec)
        self._clock = clock
        self._in_flight: dict[str, int] = {}
        now = clock()
        self._buckets = {name: TokenBucket(b, now) for name, b in spec.buckets.items()}
        self._fair: FairQueue[Waiter] = FairQueue(spec.fairness, spec.class_weights)
        self._seq = 0
        self._depth = 0
        self._queued: dict[str, int] = {}
        self._held: dict[str, tuple[Grant, float]] = {}
        #: what waiters of priority <= p are blocked on, as of the last scan (index p)
        self._blocked: list[set[str]] = [set() for _ in Priority]
        self._hold_ewma: dict[str, float] = {}
        self._wakeup = EarliestWakeup(self._scan)  # bucket refills for waiters blocked on them
        self._rescan_pending = False
        self._closed = False

    @abc.abstractmethod
    def _scan(self) -> None:
        """Serve the waiters that can go now (``memory``); after any change of caps."""
