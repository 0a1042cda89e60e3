"""The Redis store: every proxy host on one Redis shares the same caps, buckets and queue.

Theory of operation
-------------------
All decisions run in Lua scripts (``lua/*.lua``; ``lua/lib.lua`` holds the key layout), so a
decision and the state it changes are one atomic step, with Redis ``TIME`` as the only clock.

- Admit (``admit.lua``): one round trip either grants (fast path) or queues the request in its
  unit (one flow's waiters needing the same things, see ``fairness``), and says which
  grants-stream position to follow. A release (``release.lua``, one round trip, off the request
  path) offers unit heads in fair order, hands permits straight to the next eligible waiter and
  announces it on the grants stream. One blocking
  XREAD loop per host resolves its waiters' futures: nothing per waiter while queued.
- Leases: a grant is a lease owned by its host. Each host renews all of its leases with one
  heartbeat per interval (one deadline per host); a host past its deadline is reaped by the
  next heartbeat of any other host, so a crashed host's permits return within TTL + one
  interval.
- Data loss: the ``meta.epoch`` marker disappears with the data (restart without persistence,
  failover, FLUSHALL). Whoever finds it missing creates a new epoch and pauses admissions for
  ``recovery_pause_s``; every host then re-registers what it holds (``register.lua``, even above
  a cap), and its queued waiters, with their original arrival order. Releases leave tombstones
  so a registration already on the wire cannot resurrect a lease.
- Retries: every script is idempotent per request id (redis-py retries a command whose
  connection dropped), so a retried call never grants or charges twice.
- Degraded: when Redis cannot be reached the host enforces a local share of each limit (see
  ``redis_local``), reports ``degraded``, and when Redis answers again re-registers every
  permit it granted meanwhile before going back to the shared limits.

A request's life here: QUEUED (waiter with a future) -> GRANTED (lease, in ``_held``) ->
RELEASED (tombstone); CANCELLED / TIMED_OUT remove the waiter atomically (``cancel.lua``: a
waiter granted at that very instant keeps its grant, and a cancelled one has it released);
LOST: the host's deadline passed and another host's heartbeat took its leases back.

Modules: ``redis_core`` (state and the seams between the parts), ``redis_admission``,
``redis_release``, ``redis_heartbeat`` (renewal, registration), ``redis_degraded`` (local
share, the heal), ``redis_caps`` (live caps, reloads), ``redis_snapshot``; this module starts
and stops the store.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from ..errors import ShuttingDown, StoreUnavailable
from .redis_admission import RedisAdmission
from .redis_caps import RedisCaps
from .redis_connect import client_for, endpoint_of
from .redis_core import COMMAND_RETRIES
from .redis_degraded import RedisDegraded
from .redis_errors import STORE_ERRORS, StoreFault, StoreMisconfigured, classify
from .redis_grants import READ_BLOCK_MS, GrantsReader
from .redis_heartbeat import RedisHeartbeat
from .redis_pipeline import ScriptPipeline
from .redis_release import RedisRelease
from .redis_scripts import Scripts, config_fields, load_script, pool_keys
from .redis_snapshot import RedisSnapshot
from .redis_status import read_status_document

__all__ = ["RedisStore", "StoreUnavailable", "mark_fresh", "read_status_document"]

log = logging.getLogger("llm_throttle.redis")

#: faults at start-up that no waiting fixes: the proxy refuses to start (exit code 2)
FATAL_AT_START = (StoreFault.AUTH, StoreFault.NOPERM)


class RedisStore(RedisAdmission, RedisRelease, RedisHeartbeat, RedisDegraded, RedisCaps,
                 RedisSnapshot):
    """Limits shared by every host on one Redis. Never exceeds a cap while Redis is up and
    every host heartbeats; the bounded exceptions are in ``docs/redis.md``."""

    # -- lifecycle ---------------------------------------------------------------------------

    def _connect(self, socket_timeout: float) -> Redis:
        return client_for(
            self.url, decode_responses=True, socket_timeout=socket_timeout,
            socket_connect_timeout=min(1.0, self._deadline_s), health_check_interval=0,
            retry=Retry(ExponentialBackoff(cap=0.25, base=0.05), COMMAND_RETRIES),
        )

    async def start(self) -> None:
        self._client = self._connect(socket_timeout=self._deadline_s)
        self._reader = self._connect(socket_timeout=READ_BLOCK_MS / 1000 + self._deadline_s)
        self._grants = GrantsReader(self._reader, self._grants_key, self.host_id,
                                    self._hand_over, self._reading, STORE_ERRORS)
        self._scripts = Scripts.load(self._client)
        self._pipe = ScriptPipeline(endpoint_of(self._client), timeout_s=self._deadline_s)
        try:
            async with asyncio.timeout(4 * self._deadline_s):
                await self._check_permissions()
                fields: dict[Any, Any] = config_fields(self.spec)
                await self._client.hset(self._keys[13], mapping=fields)
                await self._reader.ping()  # connected now, not when the first waiter queues
                await self._resync()
                await self._adopt_static_caps()
        except StoreMisconfigured:
            await self._close_clients()
            raise
        except STORE_ERRORS as exc:  # start anyway; the heartbeat keeps trying
            if classify(exc) in FATAL_AT_START:
                await self._close_clients()
                raise StoreMisconfigured(
                    f"redis store {self._where()}: {_one_line(exc)}") from None
            self._enter_degraded(exc)
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._heartbeat_loop()),
                       loop.create_task(self._grants.run())]

    async def _check_permissions(self) -> None:
        """A missing ACL permission is a one-line error at start, not a fault found later."""
        assert self._client is not None
        missing = await load_script(self._client, "probe")(
            keys=self._keys, args=[f"{{{self.config.key_prefix}}}:probe"])
        try:
            await self._client.xread({self._grants_key: "$"}, count=1)
        except STORE_ERRORS as exc:
            if classify(exc) is not StoreFault.NOPERM:
                raise
            missing = [*missing, "xread"]
        if missing:
            raise StoreMisconfigured(
                f"redis store {self._where()}: the user lacks the ACL permission for "
                f"{', '.join(missing)} (docs/redis.md lists the ACL the proxy needs)")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.cancel_waiters(ShuttingDown())
        await asyncio.sleep(0)  # let cancelled acquires hand their cleanup to the background
        await self.drain()
        self._scan_wakeup.cancel()
        if self._loops:
            heartbeat, reader = self._loops
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            assert self._grants is not None
            await self._grants.stop(reader, self._client)
        await self.drain()
        if self._scripts is not None and not self._degraded:
            try:  # one call gives back every lease and waiter this host still has
                async with asyncio.timeout(2 * self._deadline_s):
                    await self._scripts.leave(keys=self._keys,
                                              args=[self.host_id, self._tomb_ms])
            except STORE_ERRORS as exc:
                log.warning("could not release this host's leases on close: %s", exc)
        self._held.clear()
        self._shut = True
        await self._close_clients()

    async def _close_clients(self) -> None:
        if self._pipe is not None:
            await self._pipe.close()
        for client in (self._client, self._reader):
            if client is not None:
                await client.aclose()


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def mark_fresh(url: str, key_prefix: str = "llmthrottle") -> bool:
    """Declare an empty pool freshly deployed, so the first host skips the recovery pause.

    A host cannot tell a new Redis from one that lost its data, so by default the first host
    to find no epoch pauses admissions for ``recovery_pause_s``. Call this only when no host
    holds permits in this pool. Returns False when the pool already had an epoch.
    """
    import redis

    with redis.Redis.from_url(url, decode_responses=True, socket_timeout=5.0) as client:
        meta = pool_keys(key_prefix)[0]
        return bool(client.hsetnx(meta, "epoch", f"fresh@{uuid.uuid4().hex[:8]}"))
