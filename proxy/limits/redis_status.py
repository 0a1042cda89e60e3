"""Reading the shared Redis pool: one script call gives a consistent ``Snapshot``.

``llm-throttle status --redis URL`` uses :func:`read_status_document` and needs no proxy
running: caps and bucket specs come from the ``config`` hash every host writes at start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from .base import BucketSpec, BucketState, LimitSpec, ResourceState, Snapshot
from .fairness import flow_states
from .redis_scripts import load_script, pairs, pool_keys


def snapshot_from_reply(reply: Sequence[Any], spec: LimitSpec, *, degraded: bool = False
                        ) -> Snapshot:
    """Decode ``snapshot.lua``'s reply; caps come from ``spec``."""
    now_ms = float(reply[0])
    in_flight = {k: max(0, int(v)) for k, v in pairs(reply[5]).items()}
    queued = {k: int(v) for k, v in pairs(reply[6]).items()}
    oldest = {k: float(v) / 1000 for k, v in pairs(reply[7]).items()}
    levels = pairs(reply[8])
    names = dict.fromkeys(spec.caps)
    names.update(dict.fromkeys(in_flight))
    names.update(dict.fromkeys(queued))
    resources = {
        name: ResourceState(
            in_flight=in_flight.get(name, 0),
            cap=spec.cap_of(name),
            queued=queued.get(name, 0),
            oldest_wait_s=oldest.get(name, 0.0),
        )
        for name in names
    }
    buckets = {}
    for name, bucket in spec.buckets.items():
        level = bucket.capacity
        if name in levels:
            stored, updated = (float(x) for x in levels[name].split())
            elapsed_s = max(0.0, now_ms - updated) / 1000
            level = min(bucket.capacity, stored + elapsed_s * bucket.rate_per_s)
        buckets[name] = BucketState(level, bucket.capacity, bucket.rate_per_s)
    counters: dict[tuple[int, str], float] = {}
    waiting: dict[tuple[int, str], int] = {}
    served: dict[tuple[int, str], float] = {}
    tables: dict[str, dict[tuple[int, str], Any]] = {"f": counters, "n": waiting, "s": served}
    for field, value in pairs(reply[10] if len(reply) > 10 else []).items():
        table = tables.get(field[:1])
        priority, sep, flow = field[1:].partition("\x1f")
        if table is not None and sep and priority.isdigit():
            table[(int(priority), flow)] = (int(value) if field[0] == "n" else float(value))
    return Snapshot(
        flows=flow_states(counters, waiting, served),
        resources=resources,
        buckets=buckets,
        queue_depth=int(reply[1]),
        oldest_wait_s=float(reply[2]) / 1000,
        store="redis",
        degraded=degraded,
        hosts=int(reply[3]),
    )


def spec_from_config(fields: dict[str, str]) -> LimitSpec:
    """The ``LimitSpec`` the hosts wrote to the pool's ``config`` hash."""
    caps: dict[str, int | None] = {}
    prefix_caps: dict[str, int] = {}
    buckets: dict[str, BucketSpec] = {}
    for key, value in fields.items():
        kind, _, name = key.partition(":")
        if kind == "c":
            caps[name] = int(value) if value else None
        elif kind == "p":
            prefix_caps[name] = int(value)
        elif kind == "b":
            capacity, rate = value.split()
            buckets[name] = BucketSpec(float(capacity), float(rate))
    return LimitSpec(
        caps=caps,
        buckets=buckets,
        max_queue_depth=int(fields.get("max_depth", 1000)),
        max_wait_s=float(fields.get("max_wait_s", 120.0)),
        prefix_caps=prefix_caps,
    )


async def read_snapshot(url: str, key_prefix: str = "llmthrottle"
                        ) -> tuple[Snapshot, LimitSpec]:
    """The pool's state straight from Redis, and the limits the hosts registered."""
    client = Redis.from_url(url, decode_responses=True, socket_timeout=5.0,
                            socket_connect_timeout=5.0)
    try:
        reply = await load_script(client, "snapshot")(keys=pool_keys(key_prefix))
    finally:
        await client.aclose()
    spec = spec_from_config(pairs(reply[9]))
    return snapshot_from_reply(reply, spec), spec


async def read_status_document(url: str, key_prefix: str = "llmthrottle") -> dict[str, Any]:
    """The ``/throttle/status`` document, built from Redis alone (no proxy needed)."""
    from ..status import RequestRates, SaturationTracker, attribution_listed, status_document

    snapshot, spec = await read_snapshot(url, key_prefix)
    return status_document(snapshot, SaturationTracker(), RequestRates(),
                           spec.max_queue_depth, spec.max_wait_s,
                           attribution_listed=attribution_listed(spec))
