"""Adaptive caps shared by every host on one Redis: one host decides, every host obeys.

Theory of operation
-------------------
The cap of an adaptive upstream is one live cap in Redis (``RedisStore.set_cap``) that every
host's admissions read. One host at a time holds the *capacity lease* (``SET NX PX`` on
``{prefix}:capacity:lease``, renewed every tick): only it writes caps. Every other host pushes
its finished-request samples to a bounded Redis list (``{prefix}:capacity:samples``, one
``RPUSH`` per tick, trimmed to ``MAX_SAMPLES``); the lease holder pops them each tick and feeds
its own controllers, so the cap is computed from the samples of every host. It also feeds them
the in-flight count of the whole pool (from the store snapshot), so growth is judged on the
load of all hosts. Followers adopt the live cap each tick, so their status shows it and a
follower that takes over starts from the shared number, not from the floor.

When the lease holder dies its lease expires after ``LEASE_TTL_TICKS`` ticks; the next host
to tick takes it and continues from the current live cap with its own (adopted) controller
state; the cap stays where it was meanwhile (admissions never wait on the lease). Samples are
stamped with their age when pushed, so the new holder places them on its own clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from ..tasks import cancel_and_wait
from .controller import AdaptiveCap
from .signals import Outcome, Sample

if TYPE_CHECKING:
    from ..limits.redis import RedisStore

log = logging.getLogger("llm_throttle.capacity")

MAX_SAMPLES = 10_000
LEASE_TTL_TICKS = 3


class SharedHost(Protocol):
    """What the shared cap needs of this host's capacity manager (``CapacityManager``).

    A protocol, not the class, so that the manager can build this object without the two
    modules importing each other."""

    controllers: Mapping[str, AdaptiveCap]
    deciding: Callable[[], bool]
    forward: Callable[[str, Sample], None] | None

    def adopt(self, caps: Mapping[str, int | None]) -> None: ...

    def record_forwarded(self, upstream: str, sample: Sample) -> None: ...


class SharedCapacity:
    """Runs the lease, the sample exchange and cap adoption for one host."""

    def __init__(self, manager: SharedHost, store: RedisStore, tick_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.manager = manager
        self.store = store
        self.tick_s = tick_s
        self._clock = clock
        prefix = store.config.key_prefix
        self._lease_key = f"{{{prefix}}}:capacity:lease"
        self._samples_key = f"{{{prefix}}}:capacity:samples"
        self._outbox: list[str] = []
        self.leader = False
        self._task: asyncio.Task[None] | None = None
        manager.deciding = lambda: self.leader
        manager.forward = self.push

    def push(self, upstream: str, sample: Sample) -> None:
        if len(self._outbox) < MAX_SAMPLES:
            self._outbox.append(json.dumps([
                upstream, sample.outcome.value, self._clock() - sample.started_at,
                sample.ttft_s, sample.tpot_s, sample.prompt_tokens]))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        client = self.store.client
        if self.leader and client is not None:  # hand the lease on at once
            try:
                if await client.get(self._lease_key) == self.store.host_id:
                    await client.delete(self._lease_key)
            except Exception as exc:  # noqa: BLE001 - closing: nothing else to do
                log.debug("could not hand the capacity lease on: %r", exc)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:  # noqa: BLE001 - Redis away: the next tick retries
                log.debug("shared capacity tick failed: %r", exc)
            await asyncio.sleep(self.tick_s)

    async def tick(self) -> None:
        client = self.store.client
        if client is None:
            return
        ttl_ms = int(self.tick_s * LEASE_TTL_TICKS * 1000)
        me = self.store.host_id
        if await client.set(self._lease_key, me, nx=True, px=ttl_ms):
            holder = me
        else:
            holder = await client.get(self._lease_key)
            if holder == me:
                await client.pexpire(self._lease_key, ttl_ms)
        was, self.leader = self.leader, holder == me
        if self.leader != was:
            log.info("capacity lease %s", "taken" if self.leader else "lost")
        if self.leader:
            await self._lead(client)
        else:
            if self._outbox:
                batch, self._outbox = self._outbox, []
                await client.rpush(self._samples_key, *batch)
                await client.ltrim(self._samples_key, -MAX_SAMPLES, -1)
            self.manager.adopt(await self.store.live_caps())

    async def _lead(self, client: object) -> None:
        self._outbox.clear()  # this host feeds its own controllers directly now
        raw = await client.lpop(self._samples_key, MAX_SAMPLES)  # type: ignore[attr-defined]
        now = self._clock()
        for item in raw or ():
            upstream, outcome, age, ttft, tpot, prompt = json.loads(item)
            self.manager.record_forwarded(upstream, Sample(
                Outcome(outcome), now - age, ttft, tpot, prompt))
        snapshot = await self.store.snapshot()
        for resource, ctrl in self.manager.controllers.items():
            state = snapshot.resources.get(resource)
            if state is not None:
                ctrl.observe_in_flight(state.in_flight)
