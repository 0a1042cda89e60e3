"""Retries are safe: a script call whose connection dies after Redis ran it is sent again by
redis-py, and the second run must neither grant nor charge twice."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import pytest

from proxy.config import RedisConfig
from proxy.limits.base import BucketSpec, Charge, Demand, LimitSpec, Option, Priority
from proxy.limits.redis import RedisStore, StoreUnavailable
from tests.redis_server import RedisServer

_ids = itertools.count()
QUIET = RedisConfig(heartbeat_s=30.0, lease_ttl_s=60.0)  # no background traffic


def demand(*resources: str, charges: tuple[Charge, ...] = ()) -> Demand:
    return Demand(f"k{next(_ids)}", Priority.BATCH, resources,
                  (Option("up", ("upstream:up",)),), charges)


class ReplyDropper:
    """A TCP relay to Redis that, once armed, lets the next request through, swallows its
    reply and closes the connection: the call ran, the client never heard back."""

    def __init__(self, port: int):
        self.port = port
        self.armed = False
        self.dropped = 0
        self.server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
                     ) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.port)

        async def upstream() -> None:
            while data := await client_r.read(65536):
                redis_w.write(data)
                await redis_w.drain()

        async def downstream() -> None:
            while data := await redis_r.read(65536):
                if self.armed:
                    self.armed = False
                    self.dropped += 1
                    raise ConnectionResetError("reply dropped")
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in (client_w, redis_w):
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@pytest.fixture
async def dropper(redis_server: RedisServer, redis_store_url: str
                  ) -> AsyncIterator[ReplyDropper]:
    relay = ReplyDropper(redis_server.port)
    await relay.start()
    yield relay
    await relay.close()


SPEC = LimitSpec(caps={"model:m": 5}, buckets={"tpm:model:m": BucketSpec(1000, 1e-6)})


async def test_admit_and_release_whose_replies_are_lost_run_once(dropper, redis_store_url):
    store = RedisStore(SPEC, dropper.url, QUIET)
    await store.start()
    observer = RedisStore(SPEC, redis_store_url, QUIET)
    await observer.start()
    try:
        dropper.armed = True
        grant = await store.acquire(demand("model:m", charges=(Charge("tpm:model:m", 100),)))
        assert dropper.dropped == 1  # the first admit ran, its reply was lost, it was retried
        snap = await observer.snapshot()
        assert snap.resources["model:m"].in_flight == 1  # granted once
        assert snap.buckets["tpm:model:m"].level == pytest.approx(900, abs=0.01)  # charged once

        dropper.armed = True
        await store.release(grant, (Charge("tpm:model:m", -60),))
        assert dropper.dropped == 2
        snap = await observer.snapshot()
        assert snap.resources["model:m"].in_flight == 0  # given back once (no negative count)
        assert snap.buckets["tpm:model:m"].level == pytest.approx(960, abs=0.01)  # settled once
    finally:
        await store.close()
        await observer.close()


async def test_client_kill_storm_never_double_grants_or_charges(redis_server, redis_store_url):
    """Two hosts admit and release in a loop while every client connection is killed again
    and again (``CLIENT KILL TYPE normal``): the cap holds, and every count and bucket ends
    exactly where the requests that completed put them."""
    spec = LimitSpec(caps={"model:m": 3}, buckets={"rpm:model:m": BucketSpec(1e6, 1e-6)})
    # A kill that lands while redis-py is still opening a connection is not retried and
    # counts as an outage; "closed" keeps such moments out of the counts (no local grants).
    config = RedisConfig(heartbeat_s=0.2, lease_ttl_s=5.0, on_store_error_concurrency="closed",
                         on_store_error_rates="closed")
    hosts = [RedisStore(spec, redis_store_url, config) for _ in range(2)]
    for host in hosts:
        await host.start()
    held = 0
    peak = 0
    done = 0

    async def worker(store: RedisStore) -> None:
        nonlocal held, peak, done
        for _ in range(15):
            while True:
                try:
                    grant = await store.acquire(
                        demand("model:m", charges=(Charge("rpm:model:m", 1),)))
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.05)
            held += 1
            peak = max(peak, held)
            await asyncio.sleep(0.002)
            held -= 1
            await store.release(grant)
            done += 1

    async def killer() -> None:
        while True:
            await asyncio.to_thread(redis_server.command, "CLIENT", "KILL", "TYPE", "normal",
                                    "SKIPME", "yes")
            await asyncio.sleep(0.04)

    kill = asyncio.create_task(killer())
    try:
        await asyncio.wait_for(asyncio.gather(*(worker(h) for h in hosts for _ in range(3))), 60)
    finally:
        kill.cancel()
    try:
        for _ in range(100):  # a host that lost every retry to the storm is degraded a moment
            if not any(h.degraded for h in hosts):
                break
            await asyncio.sleep(0.05)
        for host in hosts:
            await host.drain()
        snap = await hosts[0].snapshot()
        assert peak <= 3
        assert done == 90
        assert snap.resources["model:m"].in_flight == 0
        assert snap.queue_depth == 0
        # charged exactly once per request that was granted
        assert snap.buckets["rpm:model:m"].level == pytest.approx(1e6 - 90, abs=0.5)
    finally:
        for host in hosts:
            await host.close()
