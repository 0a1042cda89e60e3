"""Token-bucket arithmetic shared by the stores (the Redis Lua scripts mirror it).

A bucket holds at most ``capacity`` tokens and refills at ``rate_per_s``. It may go into
debt: a charge needs ``min(amount, capacity)`` tokens present, then takes the whole amount,
so a charge bigger than the burst waits a finite time instead of never fitting.
"""

from __future__ import annotations

from .base import BucketSpec


class TokenBucket:
    """One bucket; time is passed in (no clock of its own), so it is trivially testable."""

    __slots__ = ("spec", "level", "updated")

    def __init__(self, spec: BucketSpec, now: float):
        self.spec = spec
        #: tokens available now; negative while in debt
        self.level = spec.capacity
        #: when ``level`` was last brought up to date
        self.updated = now

    def refill(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0:
            self.level = min(self.spec.capacity, self.level + elapsed * self.spec.rate_per_s)
            self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` may be taken (0 when it may be taken now)."""
        self.refill(now)
        needed = min(amount, self.spec.capacity)
        if self.level >= needed:
            return 0.0
        return (needed - self.level) / self.spec.rate_per_s

    def take(self, amount: float) -> None:
        """Charge ``amount`` (may be negative: a refund); never above capacity."""
        self.level = min(self.spec.capacity, self.level - amount)
