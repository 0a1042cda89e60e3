"""The queue's cost against its length: Redis time per admit and per release at N waiters.

    python -m loadtest.bench_queue --depths 10,100,1000,10000 --flows 8 --samples 50

For each depth N: one permit is held (cap 1) and N waiters from ``--flows`` flows are queued
in a Redis store (a ``redis-server`` started here unless ``--redis URL``). Then ``--samples``
more requests are queued (admits at depth N) and ``--samples`` releases each hand the permit
to the next waiter (releases at depth N). Redis time is the ``evalsha`` usec of INFO
commandstats (the scripts' own time inside Redis), per call. The memory store is measured the
same way (wall time of ``release`` in this process). A flat queue keeps both within 2x
from 10 to 10,000 waiters.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time

from proxy.config import RedisConfig
from proxy.limits.base import Demand, Grant, LimitSpec, LimitStore, Option, Priority
from proxy.limits.memory import MemoryStore
from proxy.limits.redis import RedisStore, mark_fresh
from proxy.limits.redis_scripts import pool_keys

from .redis_server import redis_url_or_own

_ids = itertools.count()
OPTIONS = (Option("up", ("upstream:up",)),)


def _demand(flow: str) -> Demand:
    return Demand(f"q{next(_ids)}", Priority.BATCH, ("model:m",), OPTIONS, flow=flow,
                  cost=64.0)


def _evalsha(url: str) -> tuple[int, float]:
    import redis

    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), float(stats.get("usec", 0))


async def _queued(store: LimitStore, n: int, redis_url: str | None) -> None:
    """Until ``n`` are queued; on Redis read the queue's ZCARD (a snapshot is an EVALSHA
    that reads every waiter: it would count in the figures)."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url) if redis_url else None
    try:
        for _ in range(100000):
            depth = (await client.zcard(pool_keys("llmthrottle")[6]) if client is not None
                     else (await store.snapshot()).queue_depth)
            if depth >= n:
                return
            await asyncio.sleep(0.01)
    finally:
        if client is not None:
            await client.aclose()
    raise RuntimeError(f"queue never reached {n}")


async def _one_depth(store: LimitStore, depth: int, flows: int, samples: int,
                     redis_url: str | None) -> tuple[float, float]:
    """(admit, release) cost in us at ``depth`` waiters."""
    grants: asyncio.Queue[Grant] = asyncio.Queue()

    async def wait(flow: str) -> None:
        await grants.put(await store.acquire(_demand(flow)))

    holder = await store.acquire(_demand("holder"))
    tasks = [asyncio.create_task(wait(f"flow{i % flows}")) for i in range(depth)]
    await _queued(store, depth, redis_url)

    before = _evalsha(redis_url) if redis_url else (0, 0.0)
    started = time.perf_counter()
    tasks += [asyncio.create_task(wait(f"flow{i % flows}")) for i in range(samples)]
    await _queued(store, depth + samples, redis_url)
    admit_wall = (time.perf_counter() - started) / samples * 1e6
    after = _evalsha(redis_url) if redis_url else (0, 0.0)
    admit = (after[1] - before[1]) / max(1, after[0] - before[0]) if redis_url else admit_wall

    release_us = 0.0
    before = _evalsha(redis_url) if redis_url else (0, 0.0)
    current = holder
    for _ in range(samples):
        started = time.perf_counter()
        await store.release(current)
        release_us += (time.perf_counter() - started) * 1e6
        current = await asyncio.wait_for(grants.get(), 30)
    after = _evalsha(redis_url) if redis_url else (0, 0.0)
    release = ((after[1] - before[1]) / max(1, after[0] - before[0]) if redis_url
               else release_us / samples)
    # drain the rest without measuring
    await store.release(current)
    for _ in range(depth):
        await store.release(await asyncio.wait_for(grants.get(), 30))
    await asyncio.gather(*tasks)
    return admit, release


async def _run_store(store: LimitStore, depths: list[int], flows: int, samples: int,
                     redis_url: str | None) -> dict[int, tuple[float, float]]:
    await store.start()
    try:
        return {d: await _one_depth(store, d, flows, samples, redis_url) for d in depths}
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="10,100,1000,10000")
    parser.add_argument("--flows", type=int, default=8)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--redis", default=None, help="an empty Redis to use")
    args = parser.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    spec = LimitSpec(caps={"model:m": 1}, max_queue_depth=max(depths) + 2 * args.samples,
                     max_wait_s=600)
    with redis_url_or_own(args.redis) as url:
        mark_fresh(url)
        config = RedisConfig(heartbeat_s=5, lease_ttl_s=600)
        redis_costs = asyncio.run(_run_store(RedisStore(spec, url, config), depths, args.flows,
                                             args.samples, url))
        memory_costs = asyncio.run(_run_store(MemoryStore(spec), depths, args.flows,
                                              args.samples, None))
    print(f"{args.flows} flows, {args.samples} samples per depth, cap 1")
    print()
    print("| waiters | Redis us / admit | Redis us / release | memory us / release |")
    print("|---|---|---|---|")
    for d in depths:
        print(f"| {d} | {redis_costs[d][0]:.1f} | {redis_costs[d][1]:.1f} | "
              f"{memory_costs[d][1]:.1f} |")
    admits = [redis_costs[d][0] for d in depths]
    releases = [redis_costs[d][1] for d in depths]
    print()
    print(f"max/min: Redis admit {max(admits) / min(admits):.2f}x, "
          f"Redis release {max(releases) / min(releases):.2f}x")


if __name__ == "__main__":
    main()
