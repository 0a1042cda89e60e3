"""A replica promoted while the old master still took writes (a failover's lost writes).

Redis replicates asynchronously: whatever the old master acknowledged after its replica
stopped copying it is gone once the replica is the master. An admit lost that way is put back
by the heartbeat (``register``); a release lost that way left a lease the host no longer
holds, which its heartbeat would renew for good.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from loadtest.redis_relay import RedisRelay
from proxy.config import RedisConfig
from proxy.limits.base import Demand, LimitSpec, Option, Priority
from proxy.limits.redis import RedisStore, mark_fresh
from proxy.limits.redis_status import read_snapshot
from tests.redis_server import RedisServer, master_and_replica, redis_server_binary

_ids = itertools.count()
FAST = RedisConfig(heartbeat_s=0.1, lease_ttl_s=0.5, command_timeout_s=0.5)


def demand() -> Demand:
    return Demand(f"p{next(_ids)}", Priority.BATCH, ("model:m",),
                  (Option("up", ("upstream:up",)),), max_wait_s=0.5)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RedisServer, RedisServer, RedisRelay]]:
    """A master, its replica, and a relay the store reaches the master through."""
    if redis_server_binary() is None:
        pytest.skip("redis-server not found on PATH")
    master, replica = master_and_replica()
    relay = RedisRelay(master.port)
    await relay.start()
    try:
        yield master, replica, relay
    finally:
        await relay.close()
        replica.stop()
        master.stop()


async def _in_flight(url: str) -> int:
    snapshot, _ = await read_snapshot(url)
    return snapshot.resources["model:m"].in_flight if "model:m" in snapshot.resources else 0


async def test_releases_lost_in_a_failover_do_not_hold_permits_for_good(pair):
    """Hazard: two releases acknowledged by the old master only (its replica was promoted a
    moment before) left both leases in the new master; the host no longer held them, so it
    never released them again, and its heartbeat kept them alive: cap 2 admitted nothing
    until the host restarted. Now the heartbeat sees Redis count more leases for the host
    than it can hold and drops the ones it does not know of."""
    master, replica, relay = pair
    mark_fresh(master.url)
    store = RedisStore(LimitSpec(caps={"model:m": 2}), relay.url(), FAST)
    await store.start()
    try:
        grants = [await store.acquire(demand()) for _ in range(2)]
        master.command("WAIT", "1", "2000")  # the replica has both leases
        assert await _in_flight(replica.url) == 2
        replica.command("REPLICAOF", "NO", "ONE")  # promoted; the old master still answers
        for grant in grants:
            await store.release(grant)  # acknowledged by the old master, lost with it
        assert await _in_flight(master.url) == 0
        relay.target = ("127.0.0.1", replica.port)  # the failover reaches the host
        relay.reset()
        master.command("REPLICAOF", "127.0.0.1", str(replica.port))

        for _ in range(100):  # well within a few heartbeats once fixed
            if await _in_flight(replica.url) == 0:
                break
            await asyncio.sleep(0.05)
        assert await _in_flight(replica.url) == 0, "leases lost releases left stay held"
        again = [await store.acquire(demand()) for _ in range(2)]  # the cap serves again
        for grant in again:
            await store.release(grant)
        assert not store.degraded
    finally:
        await store.close()


async def test_lost_releases_are_found_while_the_host_has_waiters_queued(pair):
    """Hazards: (1) the check counted queued waiters as leases the host might hold, so while
    it had as many waiters queued as the failover left stale leases, nothing was found: the
    waiters timed out behind permits nobody used (and under steady load, for good). (2) A
    request whose admit went unanswered (here the new master's NOSCRIPT degraded the store)
    had that admit undone at the heal while it still waited, so its next admit found its own
    tombstone and it was refused ("withdrawn"); the undo now waits until it gives up."""
    master, replica, relay = pair
    mark_fresh(master.url)
    store = RedisStore(LimitSpec(caps={"model:m": 2}), relay.url(), FAST)
    await store.start()
    try:
        grants = [await store.acquire(demand()) for _ in range(2)]
        master.command("WAIT", "1", "2000")
        replica.command("REPLICAOF", "NO", "ONE")
        for grant in grants:
            await store.release(grant)  # lost with the old master
        relay.target = ("127.0.0.1", replica.port)
        relay.reset()
        master.command("REPLICAOF", "127.0.0.1", str(replica.port))

        waiting = [Demand(f"p{next(_ids)}", Priority.BATCH, ("model:m",),
                          (Option("up", ("upstream:up",)),), max_wait_s=4.0)
                   for _ in range(2)]
        again = await asyncio.wait_for(
            asyncio.gather(*(store.acquire(d) for d in waiting)), 10)
        for grant in again:
            await store.release(grant)
    finally:
        await store.close()
