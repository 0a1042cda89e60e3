"""Releases: one call per finished request, off the request path; a release Redis did not
acknowledge stays owed (``_orphans``) and is sent again until Redis answers it."""

from __future__ import annotations

from .base import Charge, Grant
from .redis_core import RedisStoreCore
from .redis_errors import STORE_ERRORS


class RedisRelease(RedisStoreCore):
    """``release`` and the owed releases it leaves when Redis is away."""

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
