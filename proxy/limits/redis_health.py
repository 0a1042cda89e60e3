"""Whether this host can use Redis now, why not, and for how long it could not.

One log line per change of state (degraded, a new reason, recovered), never one per request:
a Redis that is out of memory for a minute must not write a line for every call refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .redis_errors import CallAbandoned, StoreFault, classify

log = logging.getLogger("llm_throttle.redis")


class StoreHealth:
    """The degraded state and its reason, with seconds spent degraded per reason."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.fault: StoreFault | None = None
        self._since = 0.0
        #: seconds degraded so far, per reason (the current spell not included)
        self.degraded_s: dict[str, float] = {}

    @property
    def reason(self) -> str | None:
        return None if self.fault is None else self.fault.value

    def failed(self, exc: BaseException, policy: str) -> bool:
        """Record a failed call; True when the store was healthy until now."""
        if isinstance(exc, CallAbandoned):
            return False
        fault = classify(exc)
        was = self.fault
        if was == fault:
            return False
        now = self._clock()
        if was is None:
            log.warning("redis store unavailable (%s: %s: %s): %s", fault.value,
                        type(exc).__name__, _one_line(exc), policy)
        else:
            self._add(was, now)
            log.warning("redis store still unavailable, now %s (%s: %s)", fault.value,
                        type(exc).__name__, _one_line(exc))
        self.fault = fault
        self._since = now
        return was is None

    def recovered(self) -> None:
        if self.fault is None:
            return
        self._add(self.fault, self._clock())
        log.warning("redis store reachable again after %s: shared limits resume",
                    self.fault.value)
        self.fault = None

    def seconds(self) -> dict[str, float]:
        """Seconds degraded per reason, the current spell included."""
        out = dict(self.degraded_s)
        if self.fault is not None:
            out[self.fault.value] = out.get(self.fault.value, 0.0) + self._clock() - self._since
        return out

    def _add(self, fault: StoreFault, now: float) -> None:
        self.degraded_s[fault.value] = self.degraded_s.get(fault.value, 0.0) + now - self._since


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200]
