"""Limits that change while the memory store runs: one cap at a time (the adaptive limiter,
``PUT /throttle/caps``) or a whole new spec (config reload). Waiters are reconsidered at once."""

from __future__ import annotations

from dataclasses import replace

from .base import LimitSpec
from .bucket import TokenBucket
from .memory_core import MemoryStoreCore


class MemoryCaps(MemoryStoreCore):
    """``set_cap`` and ``update_spec``; bucket levels carry over a reload, clipped to capacity."""

    async def set_cap(self, resource: str, cap: int | None) -> None:
        self.spec = replace(self.spec, caps={**self.spec.caps, resource: cap})
        self._scan()  # a raised cap serves waiters now; a lowered one blocks the next ones

    async def update_spec(self, spec: LimitSpec) -> None:
        now = self._clock()
        buckets = {}
        for name, bucket_spec in spec.buckets.items():
            bucket = self._buckets.get(name)
            if bucket is None:
                bucket = TokenBucket(bucket_spec, now)
            else:
                bucket.refill(now)
                bucket.spec = bucket_spec
                bucket.level = min(bucket.level, bucket_spec.capacity)
            buckets[name] = bucket
        self._buckets = buckets
        self.spec = spec
        self._fair.reconfigure(spec.fairness, spec.class_weights)
        self._scan()
