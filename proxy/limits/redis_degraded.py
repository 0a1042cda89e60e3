"""Degraded mode: while Redis cannot be used, this host admits from its local share
(``redis_local``); the heartbeat that finds Redis answering again reconciles every local
grant with Redis (registers it as held) before the host admits through Redis again."""

from __future__ import annotations

import asyncio

from ..errors import StoreUnavailable
from .base import Demand, Grant
from .redis_core import HEAL_ROUNDS, RedisStoreCore, StoreDown
from .redis_errors import CallAbandoned, StoreFault
from .redis_local import acquire_until, frozen_spec, local_store, refusal


class RedisDegraded(RedisStoreCore):
    """Entering, running and leaving degraded mode."""

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
                waiter.future.set_exception(StoreDown())

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

    async def _reconcile(self, data_changed: bool) -> bool:
        """The heal, run by a heartbeat that reached Redis: register every permit this host
        holds (and send the releases it owes) before leaving degraded mode. False: local grants
        kept coming faster than they were registered; the next heartbeat tries again."""
        if self._degraded and self._local is not None:
            # Healing: admit nothing more locally, so what is registered below is all there is
            # (a local grant made between the registration and the releases sent after it
            # would be counted nowhere).
            await self._local.update_spec(frozen_spec(self._local.spec))
        if self._degraded or data_changed or self._orphans:
            for _ in range(HEAL_ROUNDS):
                granted = self._local_grants
                await self._resync()
                if self._local_grants == granted:
                    break  # Redis counts every permit this host holds
            else:
                return False
        if self._degraded:
            self._leave_degraded()
        return True

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
