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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from ..config import RedisConfig
from ..errors import QueueFull, QueueTimeout, RateLimited, ShuttingDown, StoreUnavailable
from .base import Charge, Demand, Grant, LimitSpec, LimitStore, Snapshot
from .redis_connect import client_for, endpoint_of
from .redis_errors import STORE_ERRORS, CallAbandoned, StoreFault, StoreMisconfigured, classify
from .redis_grants import READ_BLOCK_MS, GrantsReader
from .redis_health import StoreHealth
from .redis_local import LocalShare, acquire_until, frozen_spec, local_store, refusal
from .redis_pipeline import ScriptPipeline
from .redis_scripts import (
    UNCAPPED,
    DemandEncoder,
    Scripts,
    config_fields,
    live_cap_fields,
    load_script,
    pool_keys,
)
from .redis_status import read_status_document, snapshot_from_reply
from .wakeup import EarliestWakeup

__all__ = ["RedisStore", "StoreUnavailable", "mark_fresh", "read_status_document"]

log = logging.getLogger("llm_throttle.redis")

#: retries of one command after a dropped connection (scripts are idempotent)
COMMAND_RETRIES = 1
#: an admit told "the epoch changed" re-registers and retries at most this many times
EPOCH_RETRIES = 3
#: a healing host registers its local grants at most this many times in one heartbeat
HEAL_ROUNDS = 3
#: faults at start-up that no waiting fixes: the proxy refuses to start (exit code 2)
FATAL_AT_START = (StoreFault.AUTH, StoreFault.NOPERM)


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
        self._health = StoreHealth(clock)
        #: deadline of every Redis call (``redis.command_timeout_s``)
        self._deadline_s = self.config.command_timeout_s
        #: grants made from the local share so far: healing registers until none is missed
        self._local_grants = 0
        self._local: LocalShare | None = None
        #: when the last call that renewed this host's leases was sent (monotonic): Redis
        #: keeps them at least ``lease_ttl_s`` from then, so ``local_share`` may reuse them
        self._renewed_at = clock()
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
            if self._clock() >= deadline:  # Redis came and went meanwhile: the bound holds
                raise QueueTimeout(f"waited {max_wait:g}s for the limit store",
                                   retry_after_s=self.config.heartbeat_s)
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
        epoch_changes = 0
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
                if kind == "E":
                    epoch_changes += 1
                    if epoch_changes > EPOCH_RETRIES:  # never spin on Redis: degrade
                        self._orphans[rid] = ("", True)
                        self._enter_degraded(RedisError(
                            f"the store's epoch changed {epoch_changes} times in one admit"))
                        raise _StoreDown()
                    await asyncio.sleep(0.01 * 2 ** epoch_changes)
                await self._paused(kind, reply, deadline, max_wait)
                if self._clock() >= deadline:
                    raise QueueTimeout(f"waited {max_wait:g}s for the limit store to recover",
                                       retry_after_s=self.config.heartbeat_s)
            return await self._wait(waiter, max_wait)
        finally:
            self._waiters.pop(rid, None)
            if waiter.future.done() and not waiter.future.cancelled():
                waiter.future.exception()  # retrieved: no "never retrieved" warning

    async def _paused(self, kind: str, reply: Sequence[str], deadline: float,
                      max_wait: float) -> None:
        """The store lost its data ('E') or pauses admissions ('P'): re-register, then wait."""
        if kind == "E":
            try:  # within the request's bound: its max wait plus one call's deadline
                async with asyncio.timeout(max(0.0, min(
                        self._deadline_s, deadline + self._deadline_s - self._clock()))):
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
            call = asyncio.ensure_future(self._pipe.call(self._scripts.cancel, self._keys, [
                self.host_id, rid, str(int(max_wait * 1000)), self._tomb_ms]))
            budget = waiter.deadline + self._deadline_s - self._clock()
            try:
                await asyncio.wait((call,), timeout=max(0.0, budget))
                if not call.done():  # past the request's bound: clean up behind its back
                    call.add_done_callback(_retrieved)
                    self._forget_later(rid)  # runs after the cancel (same connection)
                    raise QueueTimeout(
                        f"waited {max_wait:g}s in the queue without a free slot",
                        retry_after_s=max_wait)
                reply = call.result()
            except STORE_ERRORS as exc:
                self._orphans[rid] = ("", True)
                self._enter_degraded(exc)
                raise QueueTimeout(f"waited {max_wait:g}s in the queue without a free slot",
                                   retry_after_s=max_wait) from None
            except asyncio.CancelledError:
                call.add_done_callback(_retrieved)
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
        """The grants reader runs while this host has waiters queued in Redis (not merely
        admitting: an admit granted at once needs no read)."""
        return not self._degraded and any(w.score is not None for w in self._waiters.values())

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
                async with asyncio.timeout(2 * self._deadline_s):
                    await self._beat()
            except STORE_ERRORS as exc:
                self._enter_degraded(exc)
            except Exception:  # never let the heartbeat die: leases would expire
                log.exception("heartbeat failed")

    async def _beat(self) -> None:
        assert self._scripts is not None
        sent = self._clock()
        status, epoch, pause_ms, live, wake_ms = await self._scripts.heartbeat(
            keys=self._keys, args=[self._epoch, self.host_id, self._ttl_ms,
                                   len(self._held), self._pause_ms])
        self._live_hosts = max(1, int(live))
        if status == "OK" and epoch == self._epoch:
            self._renewed_at = sent
        if self._degraded and self._local is not None:
            # Healing: admit nothing more locally, so what is registered below is all there is
            # (a local grant made between the registration and the releases sent after it
            # would be counted nowhere).
            await self._local.update_spec(frozen_spec(self._local.spec))
        if self._degraded or status != "OK" or epoch != self._epoch or self._orphans:
            for _ in range(HEAL_ROUNDS):
                granted = self._local_grants
                await self._resync()
                if self._local_grants == granted:
                    break  # Redis counts every permit this host holds
            else:
                return  # still granting locally faster than it registers: next beat
        if self._degraded:
            self._leave_degraded()
        if float(pause_ms) > 0:
            self._arm_scan(float(pause_ms) / 1000)
        elif float(wake_ms) >= 0:
            self._arm_scan(float(wake_ms) / 1000)

    async def _resync(self) -> None:
        """Register every lease and waiter of this host, then send the releases that failed to
        reach Redis: in that order Redis never counts less than the host holds (a permit reused
        locally is registered before the one it replaced is released)."""
        assert self._scripts is not None and self._grants is not None
        async with self._resync_lock:
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
            self._renewed_at = now
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
            await self._send_orphans()

    async def _send_orphans(self) -> None:
        """Releases Redis has not acknowledged yet, in one round trip; each stays owed until
        Redis answers it (an error reply too leaves it owed)."""
        assert self._client is not None and self._scripts is not None
        owed = list(self._orphans.items())
        if not owed:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for rid, (settle, refund) in owed:
                await self._scripts.release(keys=self._keys, args=[
                    self.host_id, rid, settle, self._tomb_ms, "1" if refund else ""],
                    client=pipe)
            results = await pipe.execute(raise_on_error=False)
        failed: BaseException | None = None
        for (rid, entry), result in zip(owed, results, strict=True):
            if isinstance(result, BaseException):
                failed = failed or result
            elif self._orphans.get(rid) == entry:
                del self._orphans[rid]
        if failed is not None:
            raise failed

    def _where(self) -> str:
        return self.url.rpartition("@")[2]  # no credentials in a message

    def _enter_degraded(self, exc: BaseException) -> None:
        if self._closed:
            return
        self._health.failed(exc, (
            f"enforcing local limits (concurrency {self.config.on_store_error_concurrency}, "
            f"rates {self.config.on_store_error_rates}) across {self._live_hosts} hosts"))
        if self._degraded:
            return
        self._degraded = True
        if self._pipe is not None:  # calls on the wire now cannot count: drop them all
            self._pipe.reset(CallAbandoned("the store degraded"))
        self._recovered = asyncio.Event()
        self._local = local_store(
            self.spec, self._live_hosts, self.config.on_store_error_concurrency,
            self.config.on_store_error_rates, [grant for grant, _, _ in self._held.values()])
        for waiter in self._waiters.values():
            if not waiter.future.done():
                waiter.future.set_exception(_StoreDown())

    def _leave_degraded(self) -> None:
        self._health.recovered()
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
        until = deadline
        if self.config.on_store_error_concurrency == "local_share":
            # past this Redis may have taken this host's leases back and lent them out
            until = min(deadline, self._renewed_at + self.config.lease_ttl_s)
        grant = await acquire_until(local, self._recovered, demand, until - self._clock())
        if grant is None:
            return None
        if self._local is not local:  # recovered meanwhile: hand it back, retry in Redis
            local.release_nowait(grant)
            return None
        self._held[demand.request_id] = (grant, demand.options.index(grant.option) + 1, True)
        self._local_grants += 1
        # An admit of this request abandoned on the way down must not be undone at the heal:
        # that release would tombstone the id and the registration would then skip this
        # grant (Redis would not count it). Whatever that admit did in Redis is now this
        # grant's one lease, registered once and released when it ends.
        if self._orphans.get(demand.request_id) == ("", True):
            del self._orphans[demand.request_id]
        return grant

    # -- observation and shutdown -------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        if not self._degraded and self._scripts is not None:
            try:
                async with asyncio.timeout(self._deadline_s):
                    reply = await self._scripts.snapshot(keys=self._keys)
            except STORE_ERRORS as exc:
                self._enter_degraded(exc)
            else:
                spec = self.spec
                try:
                    live = await self.live_caps()
                except STORE_ERRORS:
                    live = {}
                if live:
                    spec = replace(spec, caps={**spec.caps, **live})
                snapshot = snapshot_from_reply(reply, spec)
                self._live_hosts = max(1, snapshot.hosts)
                return snapshot
        if self._local is None:
            self._local = local_store(self.spec, self._live_hosts, "open", "open", [])
        local = await self._local.snapshot()
        return replace(local, store=self.name, degraded=True, hosts=self._live_hosts,
                       degraded_reason=self._health.reason or StoreFault.UNREACHABLE.value)

    # -- caps that change while running ------------------------------------------------------

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

    @property
    def degraded(self) -> bool:
        return self._degraded

    @property
    def degraded_reason(self) -> str | None:
        if not self._degraded:
            return None
        return self._health.reason or StoreFault.UNREACHABLE.value

    def degraded_seconds(self) -> dict[str, float]:
        """Seconds this host ran degraded, per reason (for soak reports)."""
        return self._health.seconds()

    async def cancel_waiters(self, reason: Exception) -> int:
        count = 0
        for waiter in list(self._waiters.values()):
            if not waiter.future.done():
                waiter.future.set_exception(reason)
                count += 1
        if self._local is not None:
            count += await self._local.cancel_waiters(reason)
        return count


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # nobody awaits it any more: no "never retrieved" warning


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


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
