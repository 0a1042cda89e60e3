"""The one reader per host of the grants stream: resolves this host's waiters.

A release on any host hands permits to the next waiter inside Redis and appends the hand-off
to the grants stream (``h`` host, ``r`` request id, ``o`` option, ``q`` queued ms). Each host
runs one blocking XREAD loop on it, only while it has waiters: nothing per waiter while
queued, and a stream (unlike pub/sub) keeps what was sent while the reader reconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

log = logging.getLogger("llm_throttle.redis")

#: how long one XREAD blocks waiting for grants (any grant wakes it sooner)
READ_BLOCK_MS = 2000
#: the grants stream keeps about this many entries (lua/lib.lua trims it the same)
STREAM_MAXLEN = 10000


def stream_order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class GrantsReader:
    """Reads ``key`` from a position, calling ``on_grant(rid, option, queued_ms)`` for this
    host's entries, while ``active()`` says this host has waiters."""

    def __init__(self, client: Redis, key: str, host_id: str,
                 on_grant: Callable[[str, int, float], None], active: Callable[[], bool],
                 errors: tuple[type[BaseException], ...]):
        self.client = client
        self.key = key
        self.host_id = host_id
        self.on_grant = on_grant
        self.active = active
        self.errors = errors
        #: the last entry read; grants after it are still to be seen
        self.position = "0-0"
        self._resume: str | None = None
        self._idle = False
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._read: asyncio.Future[Any] | None = None

    def follow(self, stream_id: str) -> None:
        """A waiter queued when the stream ended at ``stream_id``: read from there at least."""
        if self._idle and (self._resume is None or
                           stream_order(stream_id) < stream_order(self._resume)):
            self._resume = stream_id
        self._wake.set()

    def restart_at(self, stream_id: str) -> None:
        """The store lost its data: the new stream starts over."""
        self.position = stream_id
        if self._idle:
            self._resume = stream_id

    async def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            if not self.active():
                self._idle = True
                self._wake.clear()
                await self._wake.wait()
                self._idle = False
                if self._resume is not None:
                    self.position, self._resume = self._resume, None
                continue
            # The read runs in its own task: redis-py may swallow a cancellation that lands
            # before a command starts, so stop() ends this loop with an event instead.
            read = asyncio.ensure_future(self.client.xread(
                {self.key: self.position}, count=512, block=READ_BLOCK_MS))
            self._read = read
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait((read, stopping), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not read.done():
                return  # stopping: stop() reaps the read
            try:
                reply: Any = read.result()
            except self.errors as exc:
                # The heartbeat decides whether Redis is down; the reader just tries again.
                failures += 1
                log.debug("grants reader: %s", exc)
                await asyncio.sleep(min(1.0, 0.05 * 2 ** failures))
                continue
            failures = 0
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    self.position = entry_id
                    if fields.get("h") == self.host_id and fields.get("r"):
                        self.on_grant(fields["r"], int(fields["o"]), float(fields["q"]))

    async def stop(self, task: asyncio.Task[None], poster: Redis | None) -> None:
        """End the loop; a blocked XREAD returns when an entry arrives, so post one."""
        self._stopping.set()
        self._wake.set()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        read = self._read
        if read is None:
            return
        if not read.done() and poster is not None:
            with contextlib.suppress(*self.errors):
                await poster.xadd(self.key, {"h": self.host_id, "r": ""},
                                  maxlen=STREAM_MAXLEN, approximate=True)
        await asyncio.wait((read,), timeout=READ_BLOCK_MS / 1000 + 1)
        if read.done() and not read.cancelled():
            read.exception()
