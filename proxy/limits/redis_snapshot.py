"""What the store looks like now: Redis' view while it answers, the local share's while the
store is degraded (marked ``degraded`` with its reason)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from .base import Snapshot
from .redis_core import RedisStoreCore
from .redis_errors import STORE_ERRORS, StoreFault
from .redis_local import local_store
from .redis_status import snapshot_from_reply


class RedisSnapshot(RedisStoreCore):
    """``snapshot`` and ``cancel_waiters``."""

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

    async def cancel_waiters(self, reason: Exception) -> int:
        count = 0
        for waiter in list(self._waiters.values()):
            if not waiter.future.done():
                waiter.future.set_exception(reason)
                count += 1
        if self._local is not None:
            count += await self._local.cancel_waiters(reason)
        return count
