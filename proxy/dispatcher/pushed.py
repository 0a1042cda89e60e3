"""The backlog pushed by the proxy (``GET /throttle/events``), with the poll as the fallback.

A follower task keeps one event stream open and parses every ``state`` event with the same
parser as ``/throttle/status`` (:func:`.backlog.backlog_from_status`: an event is a cut-down
status document). While the stream is up and fresh (an event or a keep-alive within
``stale_s``), :meth:`PushedBacklog.read` answers from the latest event with no request at all,
and :meth:`PushedBacklog.wait_changed` wakes the dispatcher's watcher the moment the proxy's
state changes -- a freed slot is seen within the proxy's 0.1 s, not at the next 0.5 s poll.
Without the stream (an older proxy answers 404, too many subscribers 503, the connection broke)
every read goes to the poll source, and the follower tries again every ``retry_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence

import aiohttp

from ..cli_errors import describe_failure
from ..tasks import cancel_and_wait
from .backlog import Backlog, BacklogError, BacklogSource, backlog_from_status

log = logging.getLogger("llm_throttle.dispatch")


def events_url_for(status_url: str) -> str:
    """``.../throttle/status`` -> ``.../throttle/events`` (the same proxy, the same key)."""
    base = status_url.split("?", 1)[0].rstrip("/")
    base = base.removesuffix("/throttle/status")
    return base + "/throttle/events"


class PushedBacklog:
    """A :class:`~.backlog.BacklogSource` that also says when the backlog changed."""

    def __init__(self, url: str, models: Sequence[str] | None, fallback: BacklogSource, *,
                 api_key: str | None = None, stale_s: float = 20.0, retry_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.models = tuple(models or ())
        self.fallback = fallback
        self.stale_s = stale_s
        self.retry_s = retry_s
        self.clock = clock
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._latest: Backlog | None = None
        self._heard_at = -1e18
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: events received since start, and why the stream is not used now (None: it is)
        self.events = 0
        self.down_reason: str | None = "not connected yet"

    @property
    def connected(self) -> bool:
        return self._latest is not None and self.clock() - self._heard_at <= self.stale_s

    async def read(self) -> Backlog:
        self._ensure_follower()
        if self.connected:
            assert self._latest is not None
            return self._latest
        return await self.fallback.read()

    async def wait_changed(self, timeout: float) -> bool:
        """True when an event came within ``timeout`` seconds; False after ``timeout`` (no
        change, or no stream: the caller polls). The first event of a stream that comes up
        while waiting ends the wait too."""
        self._ensure_follower()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        changed = self._changed.is_set()
        self._changed.clear()
        return changed

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self.fallback.close()

    # -- the follower ------------------------------------------------------------------------

    def _ensure_follower(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=self.stale_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    await self._stream(session)
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    self._down(describe_failure(exc, f"GET {self.url}"))
                await asyncio.sleep(self.retry_s if self.events == 0 else 1.0)

    async def _stream(self, session: aiohttp.ClientSession) -> None:
        async with session.get(self.url, headers=self._headers) as resp:
            if resp.status != 200:
                self._down(f"GET {self.url}: HTTP {resp.status}")
                return
            log.info("following the proxy's events at %s", self.url)
            data: list[str] = []
            async for raw in resp.content:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self._heard_at = self.clock()  # an event or a keep-alive: the stream is up
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    self._take("\n".join(data))
                    data = []
        self._down("the proxy ended the event stream")

    def _take(self, payload: str) -> None:
        try:
            backlog = backlog_from_status(json.loads(payload), self.models)
        except (BacklogError, ValueError) as exc:
            self._down(f"unusable event: {exc}")
            return
        self._latest = backlog
        self.events += 1
        self.down_reason = None
        self._changed.set()

    def _down(self, reason: str) -> None:
        if self.down_reason is None:
            log.warning("event stream lost (%s); polling the status until it is back", reason)
        elif reason != self.down_reason:
            log.info("no event stream (%s); polling the status", reason)
        self.down_reason = reason
        self._latest = None
