"""The heartbeat: one call per interval renews every lease of this host (and reaps hosts past
their deadline); when the epoch changed or the store was degraded it re-registers everything
this host holds and waits for (``register.lua``) before admitting through Redis again."""

from __future__ import annotations

import asyncio
import json
import logging

from ..errors import QueueTimeout
from .redis_core import RedisStoreCore
from .redis_errors import STORE_ERRORS

log = logging.getLogger("llm_throttle.redis")


class RedisHeartbeat(RedisStoreCore):
    """Lease renewal and registration."""

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
        if not await self._reconcile(status != "OK" or epoch != self._epoch):
            return  # still granting locally faster than it registers: next beat
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
