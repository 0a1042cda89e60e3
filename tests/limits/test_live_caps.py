"""Caps that change while running (adaptive caps, configuration reload), on every store."""

from __future__ import annotations

import asyncio

import pytest

from proxy.limits.base import BucketSpec, Charge, LimitSpec, Option
from tests.limits.test_store import demand, waiting

UP = (Option("up", ("upstream:up",)),)


async def test_lowering_a_cap_never_revokes_held_permits(make_store):
    """Hazard: a cap lowered under load cutting off requests admitted under the old one, or
    letting new ones in until the count falls below the new cap."""
    store = await make_store(LimitSpec(caps={"upstream:up": 4}))
    held = [await store.acquire(demand(options=UP)) for _ in range(4)]
    await store.set_cap("upstream:up", 2)
    snap = await store.snapshot()
    assert snap.resources["upstream:up"].in_flight == 4
    assert snap.resources["upstream:up"].cap == 2
    late = asyncio.create_task(store.acquire(demand(options=UP)))
    await waiting(store, 1)
    await store.release(held[0])
    await store.release(held[1])
    await asyncio.sleep(0.1)
    assert not late.done()  # 2 in flight = the new cap
    await store.release(held[2])
    grant = await asyncio.wait_for(late, 2)
    for g in (held[3], grant):
        await store.release(g)
    assert (await store.snapshot()).resources["upstream:up"].in_flight == 0


async def test_raising_a_cap_wakes_waiters_without_a_release(make_store):
    """Hazard: waiters that stay queued after the cap grew, until some unrelated release."""
    store = await make_store(LimitSpec(caps={"upstream:up": 1}))
    held = await store.acquire(demand(options=UP))
    waiters = [asyncio.create_task(store.acquire(demand(options=UP))) for _ in range(2)]
    await waiting(store, 2)
    await store.set_cap("upstream:up", 3)
    grants = await asyncio.wait_for(asyncio.gather(*waiters), 2)
    assert (await store.snapshot()).resources["upstream:up"].in_flight == 3
    for g in (held, *grants):
        await store.release(g)


async def test_new_spec_keeps_held_permits_and_bucket_levels(make_store):
    """Hazard: a reload that forgets what is held (over-admitting) or refills every bucket."""
    spec = LimitSpec(caps={"model:a": 1}, buckets={"rpm:model:a": BucketSpec(2, 0.001)})
    store = await make_store(spec)
    rpm = (Charge("rpm:model:a", 1),)
    held = await store.acquire(demand("model:a", charges=rpm))
    queued = asyncio.create_task(store.acquire(demand("model:a", charges=rpm)))
    await waiting(store, 1)
    await store.update_spec(LimitSpec(caps={"model:a": 3},
                                      buckets={"rpm:model:a": BucketSpec(5, 0.001)}))
    second = await asyncio.wait_for(queued, 2)
    snap = await store.snapshot()
    assert snap.resources["model:a"].in_flight == 2
    assert snap.resources["model:a"].cap == 3
    assert snap.buckets["rpm:model:a"].level == pytest.approx(0, abs=0.1)  # not refilled
    assert snap.buckets["rpm:model:a"].capacity == 5
    for g in (held, second):
        await store.release(g)


async def test_every_host_obeys_one_live_cap(store_kind, make_store):
    """Hazard: each host enforcing its own idea of an adaptive cap, so N hosts admit N times
    the cap the engine can take."""
    if store_kind != "redis":
        pytest.skip("one process has one store: nothing to share")
    spec = LimitSpec(caps={"upstream:up": 10})
    leader, follower = await make_store(spec), await make_store(spec)
    await leader.set_cap("upstream:up", 2)
    held = [await follower.acquire(demand(options=UP)) for _ in range(2)]
    third = asyncio.create_task(follower.acquire(demand(options=UP)))
    await waiting(follower, 1)
    assert (await follower.snapshot()).resources["upstream:up"].cap == 2
    await leader.set_cap("upstream:up", 3)
    held.append(await asyncio.wait_for(third, 2))
    for g in held:
        await follower.release(g)
