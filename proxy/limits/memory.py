"""The embedded store: every limit held in this process, no dependencies.

Atomicity comes free: the event loop runs one callback at a time and nothing here awaits
between checking a cap and taking a permit. Waiters park on a future; a release (or a bucket
refill timer) offers the queue's unit heads in fair order (``fairness.FairQueue``) and resolves
the futures it can serve.

Modules: ``memory_core`` (the fields, ``Waiter``), ``memory_caps`` (live caps, reloads),
``memory_snapshot`` (snapshots, failing all waiters); this module admits, releases and serves
the queue: everything on the request path.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable

from ..errors import QueueFull, QueueTimeout, RateLimited, ShuttingDown
from .base import Charge, Demand, Fairness, Grant, Option
from .fairness import cost_of
from .memory_caps import MemoryCaps
from .memory_core import Waiter, touched
from .memory_snapshot import MemorySnapshot

#: assumed permit hold time before any release was seen (for retry-after estimates)
DEFAULT_HOLD_S = 1.0
#: weight of the newest observation in the hold-time average
HOLD_EWMA_ALPHA = 0.2


class MemoryStore(MemoryCaps, MemorySnapshot):
    """One process's limits. Never exceeds a cap; serves waiters by fair share (``fairness``)."""

    # -- admission -----------------------------------------------------------------------

    async def acquire(self, demand: Demand) -> Grant:
        if self._closed:
            raise ShuttingDown()
        held = self._held.get(demand.request_id)
        if held is not None:  # the same request asking twice gets the same grant
            return held[0]
        now = self._clock()
        grant, missing, _ = self._try(demand, self._blocked[demand.priority], now, None)
        if grant is not None:
            return grant

        max_wait = demand.max_wait_s if demand.max_wait_s is not None else self.spec.max_wait_s
        solo_wait = self._bucket_wait(demand.charges, now)
        if solo_wait > max_wait:
            raise RateLimited(
                f"token budget exhausted: this request would wait {solo_wait:.1f}s "
                f"(max {max_wait:g}s)",
                retry_after_s=solo_wait,
            )
        if self._depth >= self.spec.max_queue_depth:
            raise QueueFull(
                f"queue is full ({self._depth} waiting)",
                retry_after_s=self._estimate_wait(demand, now, max_wait),
            )

        if demand.max_wait_s is not None:  # its own bound: refuse now what cannot start in time
            ahead = self._estimate_wait(demand, now, math.inf, observed_only=True)
            if ahead > max_wait:
                raise QueueTimeout(
                    f"cannot start within its max wait of {max_wait:g}s: the queue ahead "
                    f"needs about {ahead:.1f}s", retry_after_s=ahead)
        waiter = self._enqueue(demand, now, missing)
        try:
            async with asyncio.timeout(max_wait):
                return await waiter.future
        except TimeoutError:
            if waiter.future.done() and not waiter.future.cancelled():
                return waiter.future.result()  # granted just as the timer fired
            self._dequeue(waiter)
            raise QueueTimeout(
                f"waited {max_wait:g}s in the queue without a free slot",
                retry_after_s=self._estimate_wait(demand, self._clock(), max_wait),
            ) from None
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                if waiter.future.exception() is None:
                    self._release_now(waiter.future.result(), ())
            else:
                self._dequeue(waiter)
            raise
        except ShuttingDown:
            self._dequeue(waiter)
            raise

    async def release(self, grant: Grant, settle: tuple[Charge, ...] = ()) -> None:
        self._release_now(grant, settle)

    def release_nowait(self, grant: Grant, settle: tuple[Charge, ...] = ()) -> None:
        # Nothing here awaits, so it cannot be interrupted: no background task needed.
        self._release_now(grant, settle)

    def _release_now(self, grant: Grant, settle: Iterable[Charge]) -> None:
        entry = self._held.pop(grant.request_id, None)
        if entry is None:
            return  # released already
        now = self._clock()
        held_for = now - entry[1]
        if grant.used is not None:
            self._fair.settle(grant.priority, grant.flow, grant.weight, grant.used - grant.cost)
        for resource in grant.resources:
            left = self._in_flight[resource] - 1
            if not left and resource not in self.spec.caps:
                # named at run time (attr:<client>/<value>) and idle: forget it, so callers
                # choosing new values cannot grow the store (or its snapshot) without bound
                del self._in_flight[resource]
                self._hold_ewma.pop(resource, None)
                continue
            self._in_flight[resource] = left
            previous = self._hold_ewma.get(resource)
            self._hold_ewma[resource] = (
                held_for if previous is None
                else previous + HOLD_EWMA_ALPHA * (held_for - previous)
            )
        for charge in settle:
            bucket = self._buckets.get(charge.bucket)
            if bucket is not None:
                bucket.refill(now)
                bucket.take(charge.amount)
        self._scan()

    # -- the one atomic step ---------------------------------------------------------------

    def _try(
        self, demand: Demand, blocked: set[str], now: float, queued_s: float | None
    ) -> tuple[Grant | None, list[str], float]:
        """Admit ``demand`` now if everything it needs is free; else say what is missing.

        ``queued_s`` is None on arrival, else how long the waiter has been queued.
        """
        missing = [r for r in demand.resources if r in blocked or self._at_cap(r)]
        best: Option | None = None
        best_load = (math.inf, math.inf)
        option_missing: list[str] = []
        for option in demand.options:
            lacking = [r for r in option.resources if r in blocked or self._at_cap(r)]
            if lacking:
                option_missing.extend(lacking)
                continue
            load = self._load(option.resources[0]) if option.resources else (0.0, 0.0)
            if load < best_load:
                best, best_load = option, load
        if best is None:
            missing.extend(option_missing)
        wait = 0.0
        for charge in demand.charges:
            if charge.bucket in blocked:
                missing.append(charge.bucket)
                continue
            bucket = self._buckets.get(charge.bucket)
            if bucket is not None and (w := bucket.wait_for(charge.amount, now)) > 0:
                missing.append(charge.bucket)
                wait = max(wait, w)
        if missing or best is None:
            return None, missing, wait

        resources = demand.resources + best.resources
        for resource in resources:
            self._in_flight[resource] = self._in_flight.get(resource, 0) + 1
        for charge in demand.charges:
            bucket = self._buckets.get(charge.bucket)
            if bucket is not None:
                bucket.take(charge.amount)
        cost = cost_of(demand, self.spec.fairness)
        self._fair.charge(demand, cost, queued=queued_s is not None)
        grant = Grant(demand.request_id, best, resources, demand.charges, queued_s or 0.0,
                      demand.priority, demand.flow, demand.weight, cost)
        self._held[demand.request_id] = (grant, now)
        return grant, [], 0.0

    def _at_cap(self, resource: str) -> bool:
        cap = self.spec.cap_of(resource)
        return cap is not None and self._in_flight.get(resource, 0) >= cap

    def _load(self, resource: str) -> tuple[float, float]:
        in_flight = self._in_flight.get(resource, 0)
        cap = self.spec.cap_of(resource)
        return (in_flight / cap if cap else 0.0, float(in_flight))

    def _bucket_wait(self, charges: Iterable[Charge], now: float) -> float:
        waits = [
            self._buckets[c.bucket].wait_for(c.amount, now)
            for c in charges if c.bucket in self._buckets
        ]
        return max(waits, default=0.0)

    # -- the queue ---------------------------------------------------------------------------

    def _enqueue(self, demand: Demand, now: float, missing: list[str]) -> Waiter:
        self._seq += 1
        waiter = Waiter(demand, asyncio.get_running_loop().create_future(), now, self._seq)
        self._fair.push(waiter)
        self._depth += 1
        for resource in waiter.touches:
            self._queued[resource] = self._queued.get(resource, 0) + 1
        # Later arrivals must not pass it on what it lacks (in fifo order: those of this
        # priority or lower; in a fair order any class may be owed the next turn).
        first = demand.priority if self.spec.fairness is Fairness.FIFO else 0
        for p in range(first, len(self._blocked)):
            self._blocked[p].update(missing)
        if all(m in self._buckets for m in missing):
            self._wakeup.arm(self._bucket_wait(demand.charges, now))
        return waiter

    def _forget(self, waiter: Waiter) -> None:
        self._depth -= 1
        for resource in waiter.touches:
            left = self._queued[resource] - 1
            if left or resource in self.spec.caps:
                self._queued[resource] = left
            else:
                del self._queued[resource]  # see _release_now: run-time names are forgotten

    def _dequeue(self, waiter: Waiter) -> None:
        """A waiter gave up: drop it, and let those it blocked be reconsidered."""
        if waiter.gone:
            return
        self._fair.remove(waiter)
        self._forget(waiter)
        if not self._rescan_pending:
            self._rescan_pending = True
            asyncio.get_running_loop().call_soon(self._scan)

    def _scan(self) -> None:
        """Serve unit heads in fair order; each one not served blocks only what it lacks."""
        self._rescan_pending = False
        if not self._depth:  # nobody waiting (the common case): nothing to serve or block
            for blocked_set in self._blocked:
                blocked_set.clear()
            return
        now = self._clock()
        blocked: set[str] = set()
        first_class: dict[str, int] = {}
        next_wake = math.inf

        def attempt(waiter: Waiter) -> list[str] | None:
            nonlocal next_wake
            if waiter.future.done():  # failed by shutdown, not yet counted out
                self._forget(waiter)
                return None
            grant, missing, wait = self._try(
                waiter.demand, blocked, now, now - waiter.enqueued_at
            )
            if grant is not None:
                self._forget(waiter)
                waiter.future.set_result(grant)
                return None
            if wait > 0:
                next_wake = min(next_wake, wait)
            priority = int(waiter.demand.priority)
            for name in missing:
                if name not in blocked:
                    blocked.add(name)
                    first_class[name] = priority
            return missing

        self._fair.serve(attempt, now, self.spec.starvation_s)
        fifo = self.spec.fairness is Fairness.FIFO
        for p, blocked_set in enumerate(self._blocked):
            blocked_set.clear()
            blocked_set.update(n for n, c in first_class.items() if not fifo or c <= p)
        if next_wake < math.inf:
            self._wakeup.arm(next_wake)

    def _estimate_wait(self, demand: Demand, now: float, max_wait: float,
                       observed_only: bool = False) -> float:
        """How long until this demand could likely be served: queue ahead x hold time / cap.

        ``observed_only``: count only resources whose hold time was measured (no guesses).
        """
        estimate = self._bucket_wait(demand.charges, now)
        for resource in touched(demand):
            cap = self.spec.cap_of(resource)
            if not cap:
                continue
            hold = self._hold_ewma.get(resource)
            if hold is None:
                if observed_only:
                    continue
                hold = DEFAULT_HOLD_S
            ahead = self._queued.get(resource, 0) + 1
            estimate = max(estimate, hold * ahead / cap)
        return min(max(estimate, 0.001), max_wait)

    # -- shutdown ----------------------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        await self.cancel_waiters(ShuttingDown())
        self._wakeup.cancel()
