"""What the memory store looks like now: counts per resource, bucket levels, the oldest
waiters; and failing every waiter at once (shutdown)."""

from __future__ import annotations

import math

from .base import BucketState, ResourceState, Snapshot
from .memory_core import MemoryStoreCore


class MemorySnapshot(MemoryStoreCore):
    """``snapshot`` and ``cancel_waiters``: off the request path, they walk the queue."""

    async def snapshot(self) -> Snapshot:
        now = self._clock()
        oldest: dict[str, float] = {}
        oldest_any = math.inf
        for waiter in self._fair.waiters():
            oldest_any = min(oldest_any, waiter.enqueued_at)
            for resource in waiter.touches:
                if waiter.enqueued_at < oldest.get(resource, math.inf):
                    oldest[resource] = waiter.enqueued_at
        names = dict.fromkeys(self.spec.caps)
        names.update(dict.fromkeys(self._in_flight))
        names.update(dict.fromkeys(self._queued))  # run-time names with only waiters, too
        resources = {
            name: ResourceState(
                in_flight=self._in_flight.get(name, 0),
                cap=self.spec.cap_of(name),
                queued=self._queued.get(name, 0),
                oldest_wait_s=now - oldest[name] if name in oldest else 0.0,
            )
            for name in names
        }
        buckets = {}
        for name, bucket in self._buckets.items():
            bucket.refill(now)
            buckets[name] = BucketState(bucket.level, bucket.spec.capacity, bucket.spec.rate_per_s)
        return Snapshot(
            resources=resources,
            buckets=buckets,
            queue_depth=self._depth,
            oldest_wait_s=now - oldest_any if oldest_any < math.inf else 0.0,
            store=self.name,
            flows=self._fair.flow_states(),
        )

    async def cancel_waiters(self, reason: Exception) -> int:
        count = 0
        for waiter in list(self._fair.waiters()):
            if not waiter.future.done():
                waiter.future.set_exception(reason)
                count += 1
        return count
