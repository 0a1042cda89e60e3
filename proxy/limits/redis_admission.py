"""Admission through Redis: one admit call grants or queues; queued waiters are resolved by
the grants reader, and a wait that runs out withdraws the waiter atomically (``cancel.lua``).

Every path that gives up on a request (timeout, cancellation, Redis gone) leaves what Redis
may hold for it to the release path (``_forget_later`` or an owed release), so nothing leaks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from ..errors import QueueFull, QueueTimeout, RateLimited, ShuttingDown
from .base import Demand, Grant
from .redis_core import EPOCH_RETRIES, RedisStoreCore, StoreDown, Waiter
from .redis_errors import STORE_ERRORS


class RedisAdmission(RedisStoreCore):
    """``acquire``: the shared limits while Redis answers, the local share while it does not."""

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
            except StoreDown:
                continue

    async def _acquire_shared(self, demand: Demand, deadline: float, max_wait: float) -> Grant:
        assert self._scripts is not None and self._pipe is not None
        assert self._grants is not None
        rid = demand.request_id
        loop = asyncio.get_running_loop()
        waiter = Waiter(demand, loop.create_future(), self._clock(), deadline)
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
                    raise StoreDown() from exc
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
                        raise StoreDown()
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
                raise StoreDown() from exc
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

    async def _wait(self, waiter: Waiter, max_wait: float) -> Grant:
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
        except StoreDown:
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

    def _reading(self) -> bool:
        """The grants reader runs while this host has waiters queued in Redis (not merely
        admitting: an admit granted at once needs no read)."""
        return not self._degraded and any(w.score is not None for w in self._waiters.values())

    def _hand_over(self, rid: str, option: int, queued_ms: float) -> None:
        waiter = self._waiters.get(rid)
        if waiter is None or waiter.future.done():
            return  # given up on: its cleanup releases what Redis granted
        waiter.future.set_result(self._granted(waiter.demand, option, queued_ms))


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # nobody awaits it any more: no "never retrieved" warning


def _granted_result(future: asyncio.Future[Grant]) -> Grant | None:
    if future.done() and not future.cancelled() and future.exception() is None:
        return future.result()
    return None
