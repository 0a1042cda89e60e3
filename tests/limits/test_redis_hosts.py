"""Several hosts (one RedisStore each) on one Redis: one fair queue, leases, cleanup."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.config import RedisConfig
from proxy.errors import QueueTimeout
from proxy.limits.base import Demand, LimitSpec, Option, Priority
from proxy.limits.redis import RedisStore
from tests.redis_server import RedisServer

_ids = itertools.count()
FAST = RedisConfig(heartbeat_s=0.1, lease_ttl_s=0.5)

HostFactory = Callable[..., Awaitable[RedisStore]]


def demand(*resources: str, priority: Priority = Priority.BATCH,
           max_wait_s: float | None = None) -> Demand:
    return Demand(f"h{next(_ids)}", priority, resources, (Option("up", ("upstream:up",)),),
                  max_wait_s=max_wait_s)


@pytest.fixture
async def hosts(redis_store_url: str) -> AsyncIterator[HostFactory]:
    """``await hosts(spec, n)`` -> n started stores sharing one pool (closed afterwards)."""
    started: list[RedisStore] = []

    async def make(spec: LimitSpec, n: int = 1, config: RedisConfig = FAST,
                   **kwargs: object) -> list[RedisStore]:
        out = []
        for _ in range(n):
            store = RedisStore(spec, redis_store_url, config, **kwargs)  # type: ignore[arg-type]
            await store.start()
            started.append(store)
            out.append(store)
        return out

    yield make  # type: ignore[misc]
    for store in started:
        await store.close()


async def queued(store: RedisStore, n: int) -> None:
    for _ in range(500):
        if (await store.snapshot()).queue_depth == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"queue never reached {n}")


async def test_arrival_order_across_hosts_within_a_class(hosts):
    """Cap 1, waiters arriving at three hosts in turn: granted in arrival order, interactive
    first, whichever host they arrived at."""
    a, b, c = await hosts(LimitSpec(caps={"model:m": 1}), 3)
    holder = await a.acquire(demand("model:m"))
    order: list[str] = []

    async def ask(store: RedisStore, name: str, priority: Priority) -> None:
        grant = await store.acquire(demand("model:m", priority=priority))
        order.append(name)
        await asyncio.sleep(0.01)
        await store.release(grant)

    tasks = []
    arrivals = [(a, "a0"), (b, "b1"), (c, "c2"), (b, "b3"), (a, "a4"), (c, "c5")]
    for i, (store, name) in enumerate(arrivals):
        tasks.append(asyncio.create_task(ask(store, name, Priority.BATCH)))
        await queued(a, i + 1)
    tasks.append(asyncio.create_task(ask(c, "chat", Priority.INTERACTIVE)))
    await queued(a, 7)
    await a.release(holder)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert order == ["chat"] + [name for _, name in arrivals]


async def test_waiters_on_a_full_model_never_hold_up_another(hosts):
    a, b = await hosts(LimitSpec(caps={"model:x": 1, "model:y": 1}), 2)
    held = await a.acquire(demand("model:x"))
    waiting = [asyncio.create_task(s.acquire(demand("model:x"))) for s in (a, b, b)]
    await queued(a, 3)
    other = await asyncio.wait_for(b.acquire(demand("model:y")), 1)  # at once, not queued
    assert other.queued_s == 0
    await b.release(other)
    await a.release(held)


    async def finish(task: asyncio.Task, store: RedisStore) -> None:
        await store.release(await task)

    await asyncio.wait_for(asyncio.gather(
        *(finish(t, s) for t, s in zip(waiting, (a, b, b), strict=True))), 5)


async def test_close_gives_back_everything_the_host_holds(hosts):
    a, b = await hosts(LimitSpec(caps={"model:m": 2}), 2)
    await a.acquire(demand("model:m"))
    await a.acquire(demand("model:m"))
    waiter = asyncio.create_task(b.acquire(demand("model:m")))
    await queued(b, 1)
    await a.close()
    grant = await asyncio.wait_for(waiter, 2)
    snap = await b.snapshot()
    assert snap.resources["model:m"].in_flight == 1
    await b.release(grant)


async def test_dead_host_permits_return_within_ttl_and_a_heartbeat(hosts):
    """A host that stops heartbeating (its loops die with it) loses its leases to the others."""
    a, b = await hosts(LimitSpec(caps={"model:m": 1}), 2)
    await a.acquire(demand("model:m"))
    waiter = asyncio.create_task(b.acquire(demand("model:m")))
    await queued(b, 1)
    for task in a._loops:  # simulate a crash: no more heartbeats, nothing released
        task.cancel()
    loop = asyncio.get_running_loop()
    start = loop.time()
    grant = await asyncio.wait_for(waiter, 5)
    took = loop.time() - start
    assert took <= FAST.lease_ttl_s + FAST.heartbeat_s + 0.3, took
    await b.release(grant)
    a._held.clear()  # it is dead: nothing of it to release on close


async def test_timed_out_waiter_granted_at_that_instant_keeps_its_grant(hosts):
    """The waiter's max wait runs out as a release hands it the permit: it is not leaked."""
    (a,) = await hosts(LimitSpec(caps={"model:m": 1}))
    for _ in range(5):
        held = await a.acquire(demand("model:m"))
        waiter = asyncio.create_task(a.acquire(demand("model:m", max_wait_s=0.2)))
        await queued(a, 1)
        await asyncio.sleep(0.19)
        await a.release(held)
        try:
            grant = await waiter
        except QueueTimeout:  # timed out: then nothing may be held
            await a.drain()
            assert (await a.snapshot()).resources["model:m"].in_flight == 0
        else:
            await a.release(grant)
        assert (await a.snapshot()).resources["model:m"].in_flight == 0


async def test_leases_are_registered_again_after_redis_loses_its_data(
        hosts, redis_server: RedisServer):
    """After a restart that lost every key, each host puts its leases back (it is the source
    of truth), so the cap still counts them and a new request waits for a real release."""
    a, b = await hosts(LimitSpec(caps={"model:m": 2}), 2, recovery_pause_s=0.3)
    ga = await a.acquire(demand("model:m"))
    gb = await b.acquire(demand("model:m"))
    await asyncio.to_thread(redis_server.restart)
    late = asyncio.create_task(a.acquire(demand("model:m")))
    await asyncio.sleep(0.8)  # past the pause and several heartbeats
    assert not late.done()
    snap = await b.snapshot()
    assert snap.resources["model:m"].in_flight == 2
    await b.release(gb)
    grant = await asyncio.wait_for(late, 2)
    for store, g in ((a, ga), (a, grant)):
        await store.release(g)
    assert (await a.snapshot()).resources["model:m"].in_flight == 0
