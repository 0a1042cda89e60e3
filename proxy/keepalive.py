"""Queued streaming clients kept alive: a 200 ``text/event-stream`` head and SSE comments.

Why: an SDK with a 30 s read timeout gives up on a request queued for 60 s (and retries,
joining the queue again at its back). A client that opts in (``clients.<name>.queue_keepalive``
or the ``x-llm-throttle-queue-keepalive: 1`` header) on a streaming request is answered
once it has waited ``queue.keepalive_after_s``: the head (200, ``text/event-stream``) goes
then, and a comment line (``: queued 10 s, position 12, about 8 s``) every
``queue.keepalive_interval_s`` until the store admits it. SSE parsers ignore comment lines.

The store's ``acquire`` is awaited in the request task as for any request; this is only a
timer task beside it, so the store's guarantees hold unchanged: a client that leaves cancels
the request task, which cancels the wait (the store holds nothing) and this timer. Once the
head is sent the answer can only be an event stream: a refusal or an upstream failure is
told as the OpenAI-shaped SSE error event (``ProxyError.sse_event``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from .limits.base import Snapshot
from .messages import Request, StreamResponse

#: a request's own opt-in (``1``/``true``/``yes``) or opt-out (``0``/``false``/``no``)
KEEPALIVE_HEADER = "x-llm-throttle-queue-keepalive"
_YES = frozenset({"1", "true", "yes", "on"})
_NO = frozenset({"0", "false", "no", "off"})
_SSE_HEAD = (("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
             (KEEPALIVE_HEADER, "1"))


def wants_keepalive(headers: Mapping[str, str], configured: bool) -> bool:
    """The request's header decides when present (an unknown value is ignored), else the
    client's ``queue_keepalive``."""
    value = headers.get(KEEPALIVE_HEADER)
    if value is not None:
        value = value.strip().lower()
        if value in _YES:
            return True
        if value in _NO:
            return False
    return configured


class QueuePositions:
    """How far back a queued request is, from one store snapshot shared by every kept-alive
    request for ``max_age_s`` (a Redis snapshot is a round trip: not one per waiter)."""

    def __init__(self, snapshot: Callable[[], Awaitable[Snapshot]],
                 admitted_rate: Callable[[str], float], max_age_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self._snapshot = snapshot
        self._admitted_rate = admitted_rate
        self._max_age_s = max_age_s
        self._clock = clock
        self._taken_at = -1e18
        self._last: Snapshot | None = None

    async def of(self, model: str) -> tuple[int, float | None]:
        """Requests queued for ``model`` (this one included), and the seconds they take at
        this host's admission rate over the last minute (None: nothing admitted lately)."""
        now = self._clock()
        if self._last is None or now - self._taken_at > self._max_age_s:
            self._taken_at = now
            self._last = await self._snapshot()
        state = self._last.resources.get(f"model:{model}")
        queued = state.queued if state is not None else self._last.queue_depth
        rate = self._admitted_rate(model)
        return queued, (queued / rate if rate > 0 else None)


def comment_line(waited_s: float, position: int, about_s: float | None) -> bytes:
    """One SSE comment: ``: queued 10 s, position 12, about 8 s``."""
    about = f", about {about_s:.0f} s" if about_s is not None else ""
    return f": queued {waited_s:.0f} s, position {position}{about}\n\n".encode()


class KeepAlive:
    """The timer beside one queued request: after ``after_s`` it starts the SSE answer, then
    writes a comment every ``interval_s``. ``stop`` before using ``response``."""

    def __init__(self, request: Request, model: str, positions: QueuePositions,
                 after_s: float, interval_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.request = request
        self.model = model
        self.positions = positions
        self.after_s = after_s
        self.interval_s = interval_s
        self.clock = clock
        #: the answer, once its head has been sent (then nothing else can be answered)
        self.response: StreamResponse | None = None
        self._started_at = clock()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        await asyncio.sleep(self.after_s)
        try:
            self.response = self.request.start_stream(200, None, _SSE_HEAD)
            while True:
                try:
                    position, about = await self.positions.of(self.model)
                except Exception:  # noqa: BLE001 - the store is failing: say less, keep alive
                    position, about = 0, None
                self.response.write(comment_line(self.clock() - self._started_at,
                                                 position, about))
                await asyncio.sleep(self.interval_s)
        except ConnectionResetError:
            return  # the client left: its request task is being cancelled

    def stop(self) -> None:
        """End the timer (admitted, refused or cancelled): no write happens after this (each
        write follows an await, where the cancellation lands)."""
        self._task.cancel()
