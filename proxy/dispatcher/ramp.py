"""The slow start after an outage or a long hold: how many workers spawning may start now.

A ramp begins when spawning resumes after the proxy was unreachable, or after a hold of at least
``after_s``; from then on at most 1 worker is started in its first second, 2 in the next, then 4,
... (:func:`.policy.ramp_allowance`), and it ends once that allowance reaches the target. A hold
for any reason stops a ramp (the next resume starts a new one); reaching the target ("nothing to
ramp") forgets the hold.
"""

from __future__ import annotations

from .policy import Decision, HoldReason, ramp_allowance


class Ramp:
    """The ramp's state, fed every decision and every tick's spawns."""

    __slots__ = ("_blocked_since", "_outage", "_spawned", "_started", "after_s")

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._blocked_since: float | None = None
        self._outage = False
        self._started: float | None = None
        self._spawned = 0

    @property
    def active(self) -> bool:
        return self._started is not None

    def allowance(self, now: float) -> int | None:
        """The ramp's allowance now; None: no ramp limits the grant."""
        if self._started is not None:
            return ramp_allowance(now - self._started, self._spawned)
        if self._blocked_since is not None and (
                self._outage or now - self._blocked_since >= self.after_s):
            return ramp_allowance(0.0, 0)
        return None

    def observe(self, decision: Decision, now: float) -> None:
        """Start, continue or end the ramp after one decision."""
        if decision.holding:
            if self._blocked_since is None:
                self._blocked_since = now
            self._outage |= decision.hold_reason is HoldReason.PROXY_UNREACHABLE
            self._started = None
        elif decision.grants:
            if self._started is None and self.allowance(now) is not None:
                self._started, self._spawned = now, 0  # resuming: slow start
            self._blocked_since, self._outage = None, False
        elif decision.free_slots == 0:
            self._blocked_since, self._outage = None, False  # at target: nothing to ramp
        if self._started is not None and decision.target is not None and \
                (1 << min(int(now - self._started) + 1, 30)) - 1 >= decision.target:
            self._started = None  # the ramp no longer limits anything

    def spawned(self, n: int) -> None:
        """Workers a tick started: they count against the ramp's allowance."""
        if self._started is not None:
            self._spawned += n
