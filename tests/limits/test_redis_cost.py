"""Cheap: one round trip to admit on the fast path, one to release, nothing per waiter while
queued, one heartbeat per host per interval (counted with INFO commandstats)."""

from __future__ import annotations

import asyncio
import itertools

from proxy.config import RedisConfig
from proxy.limits.base import Demand, LimitSpec, Option, Priority
from proxy.limits.redis import RedisStore
from tests.redis_server import RedisServer

_ids = itertools.count()


def demand(*resources: str) -> Demand:
    return Demand(f"c{next(_ids)}", Priority.BATCH, resources, (Option("up", ("upstream:up",)),))


#: what commandstats counts that is not a round trip: the commands our scripts run inside
#: Redis, and the test's own CONFIG RESETSTAT
NOT_ROUND_TRIPS = {"hget", "hmget", "hset", "hdel", "hexists", "hincrby", "hgetall", "exists",
                   "zadd", "zrem", "zrangebylex", "hincrbyfloat", "hlen", "hkeys",
                   "zscore", "zcard", "zcount", "zrange", "zrangebyscore", "zremrangebyscore",
                   "xrevrange", "time", "del", "config|resetstat"}


def command_calls(server: RedisServer) -> dict[str, int]:
    """Commands sent by clients since the last CONFIG RESETSTAT (INFO commandstats)."""
    text = server.command("INFO", "commandstats").decode()
    calls = {}
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line.partition(":")
            name = name.removeprefix("cmdstat_")
            if name not in NOT_ROUND_TRIPS:
                calls[name] = int(stats.split(",")[0].split("=")[1])
    return calls


def reset(server: RedisServer) -> None:
    server.command("CONFIG", "RESETSTAT")


async def test_one_command_to_admit_and_one_to_release(redis_server, redis_store_url):
    spec = LimitSpec(caps={"model:m": 4})
    store = RedisStore(spec, redis_store_url, RedisConfig(heartbeat_s=60, lease_ttl_s=120))
    await store.start()
    try:
        await store.release(await store.acquire(demand("model:m")))  # connections warm
        reset(redis_server)
        for _ in range(50):
            grant = await store.acquire(demand("model:m"))
            await store.release(grant)
        calls = command_calls(redis_server)
        print(f"\n50 admitted requests: {calls}")
        assert calls == {"evalsha": 100}
    finally:
        await store.close()


async def test_nothing_per_waiter_while_queued(redis_server, redis_store_url):
    spec = LimitSpec(caps={"model:m": 1})
    store = RedisStore(spec, redis_store_url, RedisConfig(heartbeat_s=60, lease_ttl_s=120))
    await store.start()
    try:
        held = await store.acquire(demand("model:m"))
        reset(redis_server)
        waiters = [asyncio.create_task(store.acquire(demand("model:m"))) for _ in range(20)]
        while (await store.snapshot()).queue_depth < 20:
            await asyncio.sleep(0.01)
        enqueued = command_calls(redis_server)
        reset(redis_server)
        await asyncio.sleep(1.0)
        idle = command_calls(redis_server)
        print(f"\nenqueue 20 (+ the test's snapshot polls): {enqueued}; 1 s queued: {idle}")
        # nothing per waiter: at most the host's one blocking XREAD coming back empty
        assert sum(idle.values()) <= 1
        assert set(idle) <= {"xread"}
        await store.release(held)
        for task in waiters:
            await store.release(await asyncio.wait_for(task, 5))
    finally:
        await store.close()


async def test_one_heartbeat_per_host_per_interval(redis_server, redis_store_url):
    config = RedisConfig(heartbeat_s=0.1, lease_ttl_s=1.0)
    hosts = [RedisStore(LimitSpec(caps={}), redis_store_url, config) for _ in range(3)]
    for host in hosts:
        await host.start()
    try:
        reset(redis_server)
        await asyncio.sleep(1.05)
        calls = command_calls(redis_server)
        print(f"\n3 idle hosts, 1 s, heartbeat 0.1 s: {calls}")
        assert set(calls) <= {"evalsha", "script|load"}  # a load after an earlier restart
        assert 27 <= calls["evalsha"] - calls.get("script|load", 0) <= 33  # 10 per host
    finally:
        for host in hosts:
            await host.close()
