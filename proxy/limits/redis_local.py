"""What a host enforces on its own while Redis is unreachable (the store is *degraded*).

Policies, per kind of limit (``redis.on_store_error_concurrency`` / ``_rates``):

- ``local_share`` (concurrency default): a host admits only into the permits Redis still
  counts for it: those it held when Redis went away, reused as its requests end (their
  releases wait for Redis). Redis never lends them to another host meanwhile, so the cap
  holds across hosts, until the host's leases may have expired (``lease_ttl_s`` after its
  last renewal); from then on it admits nothing locally. A host that held nothing admits
  nothing: without Redis it cannot learn what the other hosts hold.
- ``local_split``: each host enforces ``max(1, cap // live hosts)`` alone, counting what it
  holds. More available, but not within the cap: hosts that held unevenly add up to
  ``cap + (live hosts - 1) x (cap // live hosts)``.
- Buckets (rates ``local_share`` or ``local_split``) get ``1 / live hosts`` of their capacity
  and rate.
- ``open`` (rates default): that kind of limit is not enforced until Redis is back.
- ``closed``: requests that need that kind of limit are refused with a 503.

``live hosts`` is the count seen in the last successful heartbeat.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from ..errors import QueueTimeout
from .base import BucketSpec, Demand, Grant, LimitSpec
from .memory import MemoryStore


class LocalShare(MemoryStore):
    """The memory store, seeded with the permits this host held when Redis went away."""

    def adopt(self, grant: Grant) -> None:
        """Count a permit granted by Redis as held here, so ``release`` frees it as usual."""
        if grant.request_id in self._held:
            return
        for resource in grant.resources:
            self._in_flight[resource] = self._in_flight.get(resource, 0) + 1
        self._held[grant.request_id] = (grant, self._clock())


def share_spec(spec: LimitSpec, hosts: int, concurrency: str, rates: str,
               held: list[Grant] | None = None) -> LimitSpec:
    """The limits one host enforces alone while degraded (``held``: what Redis counts for it)."""
    hosts = max(1, hosts)
    caps: dict[str, int | None]
    prefix_caps: dict[str, int]
    if concurrency == "local_share":
        caps, prefix_caps = reuse_caps(spec, held or [])
    elif concurrency == "local_split":
        caps = {n: None if c is None else max(1, c // hosts) for n, c in spec.caps.items()}
        prefix_caps = {p: max(1, c // hosts) for p, c in spec.prefix_caps.items()}
    else:  # open (closed refuses before reaching the local store)
        caps = {n: None for n in spec.caps}
        prefix_caps = {}
    buckets = {}
    if rates in ("local_share", "local_split"):
        buckets = {
            n: BucketSpec(max(1.0, b.capacity / hosts), b.rate_per_s / hosts)
            for n, b in spec.buckets.items()
        }
    return LimitSpec(caps=caps, buckets=buckets, max_queue_depth=spec.max_queue_depth,
                     max_wait_s=spec.max_wait_s, prefix_caps=prefix_caps)


def reuse_caps(spec: LimitSpec, held: list[Grant]
               ) -> tuple[dict[str, int | None], dict[str, int]]:
    """Caps of exactly the permits Redis counts for this host: every capped resource gets the
    number of held grants that use it (0 when none does); uncapped ones stay uncapped."""
    counts: dict[str, int] = {}
    for grant in held:
        for resource in grant.resources:
            counts[resource] = counts.get(resource, 0) + 1
    caps: dict[str, int | None] = {
        n: None if c is None and n not in spec.live else counts.get(n, 0)
        for n, c in spec.caps.items()}
    for resource, count in counts.items():
        if resource not in caps and (spec.cap_of(resource) is not None
                                     or resource in spec.live):
            caps[resource] = count
    return caps, {p: 0 for p in spec.prefix_caps}


def frozen_spec(spec: LimitSpec) -> LimitSpec:
    """The local limits while a healing host registers: nothing more is admitted locally, so
    the grants Redis is told about are all there are."""
    return replace(spec, caps={n: 0 for n in spec.caps},
                   prefix_caps={p: 0 for p in spec.prefix_caps}, buckets=spec.buckets)


def refusal(spec: LimitSpec, demand: Demand, concurrency: str, rates: str) -> str | None:
    """Why a ``closed`` policy refuses this demand while degraded (None: it does not)."""
    if concurrency == "closed":
        names = list(demand.resources)
        for option in demand.options:
            names.extend(option.resources)
        if any(spec.cap_of(name) is not None for name in names):
            return "concurrency limits"
    if rates == "closed" and any(c.bucket in spec.buckets for c in demand.charges):
        return "rate limits"
    return None


def local_store(spec: LimitSpec, hosts: int, concurrency: str, rates: str,
                held: list[Grant]) -> LocalShare:
    store = LocalShare(share_spec(spec, hosts, concurrency, rates, held), clock=time.monotonic)
    for grant in held:
        store.adopt(grant)
    return store


async def acquire_until(local: LocalShare, recovered: asyncio.Event, demand: Demand,
                        max_wait_s: float) -> Grant | None:
    """Admit ``demand`` from the local share, unless ``recovered`` is set first (None then).

    A grant won at the very moment of recovery is returned, never dropped: the caller keeps
    it (it is re-registered in Redis) or gives it back.
    """
    if max_wait_s <= 0:
        raise QueueTimeout("waited the queue's max wait without a free slot", retry_after_s=1.0)
    loop = asyncio.get_running_loop()
    admit = loop.create_task(local.acquire(replace(demand, max_wait_s=max_wait_s)))
    back = loop.create_task(recovered.wait())
    try:
        await asyncio.wait((admit, back), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        admit.cancel()
        if admit.done() and not admit.cancelled() and admit.exception() is None:
            local.release_nowait(admit.result())
        raise
    finally:
        back.cancel()
    if admit.done():
        return admit.result()  # raises Throttled when the local share refuses
    admit.cancel()
    try:
        return await admit
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the caller itself is being cancelled
        return None
