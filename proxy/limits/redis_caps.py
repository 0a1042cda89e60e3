"""Caps that change while running (adaptive caps, reloads): written to Redis, obeyed by every
host and every queued waiter at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from redis.asyncio import Redis

from .base import LimitSpec
from .redis_core import RedisStoreCore
from .redis_errors import STORE_ERRORS
from .redis_scripts import UNCAPPED, DemandEncoder, config_fields, live_cap_fields


class RedisCaps(RedisStoreCore):
    """Live caps and configuration reloads."""

    async def set_cap(self, resource: str, cap: int | None) -> None:
        """The live cap in Redis, obeyed by every host and every queued waiter; this host's
        own demands carry it too, for when Redis loses it."""
        self.spec = replace(self.spec, caps={**self.spec.caps, resource: cap})
        self._encoder = DemandEncoder(self.spec)
        await self._write_caps({resource: cap})

    async def _write_caps(self, caps: Mapping[str, int | None]) -> None:
        if self._degraded or self._scripts is None or self._pipe is None:
            return  # the next change is written once Redis is back
        reply: Sequence[str] = ("-1",)
        try:
            for resource, cap in caps.items():
                reply = await self._pipe.call(self._scripts.setcap, self._keys, (
                    resource, str(UNCAPPED if cap is None else cap)))
        except STORE_ERRORS as exc:
            self._enter_degraded(exc)
            return
        if float(reply[0]) >= 0:
            self._arm_scan(float(reply[0]) / 1000)

    async def live_caps(self) -> dict[str, int | None]:
        """The live caps Redis holds now (adaptive caps, reloads)."""
        if self._client is None:
            return {}
        return live_cap_fields(await self._client.hgetall(self._keys[13]))

    async def update_spec(self, spec: LimitSpec) -> None:
        """Every cap that differs from the old spec becomes a live cap for all hosts (the last
        configuration read wins); bucket specs and queue bounds travel with demands."""
        old = self.spec
        self.spec = spec
        self._encoder = DemandEncoder(spec)
        self._max_depth = str(spec.max_queue_depth)
        changed = {name: spec.cap_of(name) for name in {**old.caps, **spec.caps}
                   if old.cap_of(name) != spec.cap_of(name)}
        if self._degraded or self._client is None:
            return
        try:
            gone = [f for f in config_fields(old) if f not in config_fields(spec)]
            if gone:
                await self._client.hdel(self._keys[13], *gone)
            await self._client.hset(self._keys[13], mapping=dict(config_fields(spec)))
        except STORE_ERRORS as exc:
            self._enter_degraded(exc)
            return
        await self._write_caps(changed)
        await self._scan()  # larger buckets serve waiters now

    async def _adopt_static_caps(self) -> None:
        """At start: live caps left by an earlier reload yield to this host's configuration
        (a host started with a new file is a reload); adaptive caps (``spec.live``) stay."""
        live = await self.live_caps()
        stale = {name: self.spec.cap_of(name) for name, cap in live.items()
                 if name not in self.spec.live and name in self.spec.caps
                 and self.spec.cap_of(name) != cap}
        if stale:
            await self._write_caps(stale)

    @property
    def client(self) -> Redis | None:
        """The command connection (the shared capacity lease uses it)."""
        return self._client
