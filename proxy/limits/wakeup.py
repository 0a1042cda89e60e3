"""A wake-up call that only moves earlier: both stores rescan their queue with one.

Several waiters may each need a rescan at a different time (a bucket refilling, a recovery
pause ending); one timer at the earliest of them is enough, because a rescan re-arms it for
whoever is still waiting.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable


class EarliestWakeup:
    """Calls ``callback`` once at the earliest time asked for since it last fired."""

    __slots__ = ("_callback", "_handle", "_at")

    def __init__(self, callback: Callable[[], None]):
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf

    def arm(self, delay_s: float) -> None:
        """Fire in ``delay_s`` seconds, unless already due sooner."""
        loop = asyncio.get_running_loop()
        at = loop.time() + delay_s
        if self._handle is not None:
            if self._at <= at:
                return
            self._handle.cancel()
        self._at = at
        self._handle = loop.call_at(at, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._at = math.inf

    def _fire(self) -> None:
        self._handle = None
        self._at = math.inf
        self._callback()
