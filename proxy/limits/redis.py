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
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import RedisConfig
from ..errors import QueueFull, QueueTimeout, RateLimited, ShuttingDown, StoreUnavailable
from .base import Charge, Demand, Grant, LimitSpec, LimitStore, Snapshot
from .redis_grants import READ_BLOCK_MS, GrantsReader
from .redis_local import LocalShare, acquire_until, local_store, refusal
from .redis_pipeline import ScriptPipeline
from .redis_scripts import DemandEncoder, Scripts, config_fields, pool_keys
from .redis_status import read_status_document, snapshot_from_reply
from .wakeup import EarliestWakeup

__all__ = ["RedisStore", "StoreUnavailable", "mark_fresh", "read_status_document"]

log = logging.getLogger("llm_throttle.redis")

#: failures that mean "Redis cannot be reached now" (anything else is a bug and propagates)
STORE_ERRORS = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)
#: retries of one command after a dropped connection (scripts are idempotent)
COMMAND_RETRIES = 3


class _StoreDown(Exception):
    """Redis became unreachable while a request was being admitted or waited."""


class _Waiter:
    __slots__ = ("deadline", "demand", "enqueued", "future", "score")

    def __init__(self, demand: Demand, future: asyncio.Future[Grant], now: float,
                 deadline: float):
        self.demand = demand
        self.future = future
        self.enqueued = now
        self.deadline = deadline
        #: queue position in Redis; None until the admit reply says the request is queued
        self.score: str | None = None


class RedisStore(LimitStore):
    """Limits shared by every host on one Redis. Never exceeds a cap while Redis is up and
    every host heartbeats; the bounded exceptions are in ``docs/redis.md``."""

    name = "redis"

    def __init__(self, spec: LimitSpec, url: str, config: RedisConfig | None = None, *,
                 recovery_pause_s: float | None = None, host_id: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(spec)
        self.url = url
        self.config = config or RedisConfig()
        #: unique per process: a restarted host is a new host, its old leases expire
        self.host_id = host_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: admissions pause this long after data loss, while hosts re-register
        self.recovery_pause_s = (2 * self.config.heartbeat_s if recovery_pause_s is None
                                 else recovery_pause_s)
        self._clock = clock
        self._keys = pool_keys(self.config.key_prefix)
        self._grants_key = self._keys[11]
        self._encoder = DemandEncoder(spec)
        self._ttl_ms = str(int(self.config.lease_ttl_s * 1000))
        self._pause_ms = str(int(self.recovery_pause_s * 1000))
        self._tomb_ms = str(int(max(3 * self.config.lease_ttl_s, 10.0) * 1000))
        self._max_depth = str(spec.max_queue_depth)
        self._client: Redis | None = None
        self._reader: Redis | None = None
        self._scripts: Scripts | None = None
        self._pipe: ScriptPipeline | None = None
        self._epoch = ""
        #: request id -> (grant, option index in Redis, granted locally while degraded)
        self._held: dict[str, tuple[Grant, int, bool]] = {}
        self._waiters: dict[str, _Waiter] = {}
        #: request id -> (settle JSON, refund): state Redis may hold for requests this host is
        #: done with (a release that failed, an admit whose answer never came); sent once
        #: Redis answers. refund: the host never used the grant, so its charges go back too.
        self._orphans: dict[str, tuple[str, bool]] = {}
        self._degraded = False
        self._local: LocalShare | None = None
        self._recovered = asyncio.Event()
        self._live_hosts = 1
        self._resync_lock = asyncio.Lock()
        self._grants: GrantsReader | None = None
        #: rescans when a bucket refills or a recovery pause ends
        self._scan_wakeup = EarliestWakeup(lambda: self._spawn(self._scan()))
        self._loops: list[asyncio.Task[None]] = []
        self._closed = False
        self._shut = False

    # -- lifecycle ---------------------------------------------------------------------------

    def _connect(self, socket_timeout: float) -> Redis:
        return Redis.from_url(
            self.url, decode_responses=True, socket_timeout=socket_timeout,
            socket_connect_timeout=1.0, health_check_interval=0,
            retry=Retry(ExponentialBackoff(cap=0.25, base=0.05), COMMAND_RETRIES),
        )

    async def start(self) -> None:
        self._client = self._connect(socket_timeout=max(1.0, self.config.heartbeat_s))
        self._reader = self._connect(socket_timeout=READ_BLOCK_MS / 1000 + 2.0)
        self._grants = GrantsReader(self._reader, self._grants_key, self.host_id,
                                    self._hand_over, self._reading, STORE_ERRORS)
        self._scripts = Scripts.load(self._client)
        self._pipe = ScriptPipeline(self.url, timeout_s=max(2.0, self.config.heartbeat_s))
        try:
            fields: dict[Any, Any] = config_fields(self.spec)
            await self._client.hset(self._keys[13], mapping=fields)
            await self._reader.ping()  # connected now, not when the first waiter queues
            await self._resync()
        except STORE_ERRORS as exc:  # start anyway; the heartbeat keeps trying
            self._enter_degraded(exc)
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._heartbeat_loop()),
                       loop.create_task(self._grants.run())]

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
                await self._scripts.leave(keys=self._keys, args=[self.host_id, self._tomb_ms])
            except STORE_ERRORS as exc:
                log.warning("could not release this host's leases on close: %s", exc)
        self._held.clear()
        self._shut = True
        if self._pipe is not None:
            await self._pipe.close()
        for client in (self._client, self._reader):
            if client is not None:
                await client.aclose()

    # -- admission ---------------------------------------------------------------------------

    async def acquire(self, demand: Demand) -> Grant:
        if self._closed:
            raise ShuttingDown()
        held = self._held.get(demand.request_id)
        if held is not None:
            return held[0]
        max_wait = demand.max_wait_s if demand.max_wait_s is not None else self.spec.max_wait_s
        deadline = self._clock() + max_wait
        while True:
            if self._degraded:
                grant = await self._acquire_local(demand, deadline)
                if grant is not None:
                    return grant
                continue  # Redis is back: go through the shared limits
            try:
                return await self._acquire_shared(demand, deadline, max_wait)
            except _StoreDown:
                continue

    async def _acquire_shared(self, demand: Demand, deadline: float, max_wait: float) -> Grant:
        assert self._scripts is not None and self._pipe is not None
        assert self._grants is not None
        rid = demand.request_id
        loop = asyncio.get_running_loop()
        waiter = _Waiter(demand, loop.create_future(), self._clock(), deadline)
        # Registered before the call: a grant can reach the stream before the admit reply.
        self._waiters[rid] = waiter
        encoded = self._encoder.demand(demand)
        max_wait_ms = str(int(max_wait * 1000))
        own_wait = "" if demand.max_wait_s is None else "1"
        try:
            while True:
                try:
                    reply = await self._pipe.call(self._scripts.admit, self._keys, [
                        self._epoch, self.host_id, rid, encoded, max_wait_ms,
                        self._max_depth, self._pause_ms, own_wait])
                except STORE_ERRORS as exc:
                    self._orphans[rid] = ("", True)  # it may have run: undo it once Redis answers
                    self._enter_degraded(exc)
                    raise _StoreDown() from exc
                except asyncio.CancelledError:
                    self._forget_later(rid)
                    raise
                kind = reply[0]
                if kind == "G":
                    return self._granted(demand, int(reply[1]), float(reply[2]))
                if kind == "Q":
                    waiter.score = reply[1]
                    self._grants.follow(reply[2])
                    if float(reply[3]) >= 0:
                        self._arm_scan(float(reply[3]) / 1000)
                    break
                if kind == "R":
                    wait_s = float(reply[1]) / 1000
                    raise RateLimited(
                        f"token budget exhausted: this request would wait {wait_s:.1f}s "
                        f"(max {max_wait:g}s)", retry_after_s=wait_s)
                if kind == "F":
                    raise QueueFull("the shared queue is full",
                                    retry_after_s=float(reply[1]) / 1000)
                if kind == "T":
                    wait_s = float(reply[1]) / 1000
                    raise QueueTimeout(
                        f"cannot start within its max wait of {max_wait:g}s: the queue ahead "
                        f"needs about {wait_s:.1f}s", retry_after_s=wait_s)
                if kind == "X":
                    raise QueueTimeout("this request was withdrawn", retry_after_s=1.0)
                await self._paused(kind, reply, deadline, max_wait)
            return await self._wait(waiter, max_wait)
        finally:
            self._waiters.pop(rid, None)
            if waiter.future.done() and not waiter.future.cancelled():
                waiter.future.exception()  # retrieved: no "never retrieved" warning

    async def _paused(self, kind: str, reply: Sequence[str], deadline: float,
                      max_wait: float) -> None:
        """The store lost its data ('E') or pauses admissions ('P'): re-register, then wait."""
        if kind == "E":
            try:
                await self._resync()
            except STORE_ERRORS as exc:
                self._enter_degraded(exc)
                raise _StoreDown() from exc
            pause_s = float(reply[2]) / 1000
        else:
            pause_s = float(reply[1]) / 1000
        if pause_s <= 0:
            return
        self._arm_scan(pause_s)
        left = deadline - self._clock()
        if left <= 0:
            raise QueueTimeout(f"waited {max_wait:g}s for the limit store to recover",
                               retry_after_s=pause_s)
        await asyncio.sleep(min(pause_s, left))

    async def _wait(self, waiter: _Waiter, max_wait: float) -> Grant:
        """Wait for the grants stream to hand this waiter its permits."""
        assert self._scripts is not None and self._pipe is not None
        rid = waiter.demand.request_id
        try:
            async with asyncio.timeout(max(0.0, waiter.deadline - self._clock())):
                return await waiter.future
        except TimeoutError:
            if _granted_result(waiter.future) is not None:
                return waiter.future.result()
            self._waiters.pop(rid, None)
            try:
                reply = await self._pipe.call(self._scripts.cancel, self._keys, [
                    self.host_id, rid, str(int(max_wait * 1000)), self._tomb_ms])
            except STORE_ERRORS as exc:
                self._orphans[rid] = ("", True)
                self._enter_degraded(exc)
                raise QueueTimeout(f"waited {max_wait:g}s in the queue without a free slot",
                                   retry_after_s=max_wait) from None
            except asyncio.CancelledError:
                self._forget_later(rid)
                raise
            if reply[0] == "G":  # granted at the very instant the wait ran out
                return self._granted(waiter.demand, int(reply[1]), float(reply[2]))
            raise QueueTimeout(f"waited {max_wait:g}s in the queue without a free slot",
                               retry_after_s=float(reply[1]) / 1000) from None
        except asyncio.CancelledError:
            grant = _granted_result(waiter.future)
            if grant is not None:
                self.release_nowait(grant)
            else:
                self._forget_later(rid)
            raise
        except _StoreDown:
            self._orphans[rid] = ("", True)
            raise
        except BaseException:
            self._forget_later(rid)
            raise

    def _granted(self, demand: Demand, option: int, queued_ms: float,
                 local: bool = False) -> Grant:
        chosen = demand.options[option - 1]
        grant = Grant(demand.request_id, chosen, demand.resources + chosen.resources,
                      demand.charges, queued_ms / 1000, demand.priority, demand.flow,
                      demand.weight, demand.cost)
        self._held[demand.request_id] = (grant, option, local)
        return grant

    # -- release -----------------------------------------------------------------------------

    async def release(self, grant: Grant, settle: tuple[Charge, ...] = ()) -> None:
        # Out of _held first: a registration sent from now on no longer lists it.
        entry = self._held.pop(grant.request_id, None)
        if entry is None:
            return  # released already
        if self._local is not None:
            self._local.release_nowait(grant, settle)
        if entry[2]:  # granted locally: Redis never charged it, so charge what it used
            settle = grant.charges + settle
        used = "" if grant.used is None else repr(float(grant.used))
        await self._release_id(grant.request_id, self._encoder.charges(settle), used=used)

    async def _release_id(self, rid: str, settle: str, refund: bool = False,
                          used: str = "") -> None:
        """Release (or withdraw from the queue) one request in Redis, now or once it answers."""
        if self._degraded or self._scripts is None or self._pipe is None or self._shut:
            if not self._shut:
                self._orphans[rid] = (settle, refund)
            return
        try:
            reply = await self._pipe.call(self._scripts.release, self._keys, [
                self.host_id, rid, settle, self._tomb_ms, "1" if refund else "", used])
        except STORE_ERRORS as exc:
            self._orphans[rid] = (settle, refund)
            self._enter_degraded(exc)
            return
        if reply[0] == "OK" and float(reply[1]) >= 0:
            self._arm_scan(float(reply[1]) / 1000)

    def _forget_later(self, rid: str) -> None:
        """Undo whatever Redis holds for a request this host gave up on (queued or granted)."""
        self._waiters.pop(rid, None)
        self._spawn(self._release_id(rid, "", refund=True))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- waking waiters ------------------------------------------------------------------------

    def _reading(self) -> bool:
        """The grants reader runs while this host has waiters queued in Redis (an admit still
        on the wire is not one: a blocking read started for it would outlive it by seconds)."""
        if self._degraded:
            return False
        return any(w.score is not None for w in self._waiters.values())

    def _hand_over(self, rid: str, option: int, queued_ms: float) -> None:
        waiter = self._waiters.get(rid)
        if waiter is None or waiter.future.done():
            return  # given up on: its cleanup releases what Redis granted
        waiter.future.set_result(self._granted(waiter.demand, option, queued_ms))

    def _arm_scan(self, delay_s: float) -> None:
        """Ask Redis to serve the queue again when a bucket refills or a pause ends."""
        if not self._closed:
            self._scan_wakeup.arm(delay_s + 0.002)  # a little late: never before Redis' clock

    async def _scan(self) -> None:
        if self._degraded or self._scripts is None or self._pipe is None or self._closed:
            return
        try:
            reply = await self._pipe.call(self._scripts.scan, self._keys, ())
        except STORE_ERRORS as exc:
            self._enter_degraded(exc)
            return
        if float(reply[0]) >= 0:
            self._arm_scan(float(reply[0]) / 1000)

    # -- heartbeat, re-registration, degraded mode ------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                await self._beat()
            except STORE_ERRORS as exc:
                self._enter_degraded(exc)
            except Exception:  # never let the heartbeat die: leases would expire
                log.exception("heartbeat failed")

    async def _beat(self) -> None:
        assert self._scripts is not None
        status, epoch, pause_ms, live, wake_ms = await self._scripts.heartbeat(
            keys=self._keys, args=[self._epoch, self.host_id, self._ttl_ms,
                                   len(self._held), self._pause_ms])
        self._live_hosts = max(1, int(live))
        if self._degraded or status != "OK" or epoch != self._epoch or self._orphans:
            await self._resync()
        if self._degraded:
            self._leave_degraded()
        if float(pause_ms) > 0:
            self._arm_scan(float(pause_ms) / 1000)
        elif float(wake_ms) >= 0:
            self._arm_scan(float(wake_ms) / 1000)

    async def _resync(self) -> None:
        """Send what failed to reach Redis, then register every lease and waiter of this host."""
        assert self._scripts is not None and self._grants is not None
        async with self._resync_lock:
            for rid, (settle, refund) in list(self._orphans.items()):
                await self._scripts.release(keys=self._keys, args=[
                    self.host_id, rid, settle, self._tomb_ms, "1" if refund else ""])
                self._orphans.pop(rid, None)
            now = self._clock()
            leases = [[rid, option, list(grant.resources), grant.queued_s * 1000]
                      for rid, (grant, option, _) in self._held.items()]
            waiters = [[rid, w.score, (now - w.enqueued) * 1000,
                        max(0.0, w.deadline - now) * 1000, self._encoder.demand(w.demand)]
                       for rid, w in self._waiters.items() if w.score is not None]
            reply = await self._scripts.register(keys=self._keys, args=[
                self.host_id, self._ttl_ms, self._pause_ms,
                json.dumps(leases) if leases else "[]", json.dumps(waiters) if waiters else "[]"])
            epoch, pause_ms, stream_id, wake_ms, live = reply[:5]
            self._live_hosts = max(1, int(live))
            if epoch != self._epoch:
                if self._epoch:
                    log.warning("redis store lost its data (epoch %s -> %s): re-registered "
                                "%d leases and %d waiters", self._epoch, epoch, len(leases),
                                len(waiters))
                self._epoch = epoch
                self._grants.restart_at(stream_id)
            rest = reply[5:]
            i = 0
            while i < len(rest):
                if rest[i] == "G":
                    self._hand_over(rest[i + 1], int(rest[i + 2]), float(rest[i + 3]))
                    i += 4
                else:
                    waiter = self._waiters.get(rest[i + 1])
                    if waiter is not None and not waiter.future.done():
                        waiter.future.set_exception(
                            QueueTimeout("lost its place in the queue", retry_after_s=1.0))
                    i += 2
            if float(pause_ms) > 0:
                self._arm_scan(float(pause_ms) / 1000)
            elif float(wake_ms) >= 0:
                self._arm_scan(float(wake_ms) / 1000)

    def _enter_degraded(self, exc: BaseException) -> None:
        if self._degraded or self._closed:
            return
        log.warning("redis store unreachable (%s: %s): enforcing local limits "
                    "(concurrency %s, rates %s) across %d hosts", type(exc).__name__, exc,
                    self.config.on_store_error_concurrency, self.config.on_store_error_rates,
                    self._live_hosts)
        self._degraded = True
        self._recovered = asyncio.Event()
        self._local = local_store(
            self.spec, self._live_hosts, self.config.on_store_error_concurrency,
            self.config.on_store_error_rates, [grant for grant, _, _ in self._held.values()])
        for waiter in self._waiters.values():
            if not waiter.future.done():
                waiter.future.set_exception(_StoreDown())

    def _leave_degraded(self) -> None:
        log.warning("redis store reachable again: shared limits resume")
        self._degraded = False
        self._local = None
        self._recovered.set()

    async def _acquire_local(self, demand: Demand, deadline: float) -> Grant | None:
        """Admit from the local share; None when Redis came back first (then retry there)."""
        why = refusal(self.spec, demand, self.config.on_store_error_concurrency,
                      self.config.on_store_error_rates)
        if why is not None:
            raise StoreUnavailable(
                f"the shared limit store is unreachable and its {why} are set to fail closed",
                retry_after_s=self.config.heartbeat_s)
        local = self._local
        assert local is not None
        grant = await acquire_until(local, self._recovered, demand, deadline - self._clock())
        if grant is None:
            return None
        if self._local is not local:  # recovered meanwhile: hand it back, retry in Redis
            local.release_nowait(grant)
            return None
        self._held[demand.request_id] = (grant, demand.options.index(grant.option) + 1, True)
        return grant

    # -- observation and shutdown -------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        if not self._degraded and self._scripts is not None:
            try:
                reply = await self._scripts.snapshot(keys=self._keys)
            except STORE_ERRORS as exc:
                self._enter_degraded(exc)
            else:
                snapshot = snapshot_from_reply(reply, self.spec)
                self._live_hosts = max(1, snapshot.hosts)
                return snapshot
        if self._local is None:
            self._local = local_store(self.spec, self._live_hosts, "open", "open", [])
        local = await self._local.snapshot()
        return replace(local, store=self.name, degraded=True, hosts=self._live_hosts)

    @property
    def degraded(self) -> bool:
        return self._degraded

    async def cancel_waiters(self, reason: Exception) -> int:
        count = 0
        for waiter in list(self._waiters.values()):
            if not waiter.future.done():
                waiter.future.set_exception(reason)
                count += 1
        if self._local is not None:
            count += await self._local.cancel_waiters(reason)
        return count


def _granted_result(future: asyncio.Future[Grant]) -> Grant | None:
    if future.done() and not future.cancelled() and future.exception() is None:
        return future.result()
    return None


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
