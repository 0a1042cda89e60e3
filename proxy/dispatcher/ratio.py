"""How many running tasks keep one GPU slot busy, learned from the tasks themselves.

A worker holds a request open only part of its life: it starts (seconds), runs tools, thinks.
Sampling, at every read of the proxy, the running tasks and the requests those tasks have open
(in flight or queued: the proxy attributes each worker's request by its header), the ratio

    tasks_per_slot = sum(running) / sum(open requests)       over a sliding window

is the number of running tasks that keep one slot busy on average; the dispatcher aims for
``cap * tasks_per_slot`` running tasks. Until the window spans ``warmup_s`` of readings with
running tasks the ``prior`` is used: workers started together all sit in their start-up at
once, and a ratio read then would be far too high. The estimate is clamped to ``[low, high]``:
one task never needs less than one slot's share, and a bound above keeps a burst of idle
workers from turning into a flood of spawns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RatioSettings:
    prior: float = 2.0
    low: float = 1.0
    high: float = 3.0
    window_s: float = 120.0
    #: samples with running tasks needed before the estimate replaces the prior
    min_samples: int = 10
    #: and the time they must span
    warmup_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.prior <= self.high:
            raise ValueError("tasks-per-slot bounds must satisfy 0 < low <= prior <= high")


class TasksPerSlot:
    """Sliding-window estimate of running tasks per open request of those tasks."""

    __slots__ = ("_open", "_running", "_samples", "settings")

    def __init__(self, settings: RatioSettings | None = None) -> None:
        self.settings = settings or RatioSettings()
        self._samples: deque[tuple[float, int, int]] = deque()
        self._running = 0
        self._open = 0

    def observe(self, now: float, running: int, open_requests: int) -> None:
        """One reading; readings with no running task say nothing about the ratio."""
        if running <= 0:
            self._trim(now)
            return
        # A worker has at most one request open: more open than running means requests of
        # tasks we do not count (another pool's workers), so cap at running.
        open_requests = min(max(open_requests, 0), running)
        self._samples.append((now, running, open_requests))
        self._running += running
        self._open += open_requests
        self._trim(now)

    def value(self, now: float) -> float:
        self._trim(now)
        if not self.learned:
            return self.settings.prior
        s = self.settings
        return min(max(self._running / self._open, s.low), s.high)

    @property
    def readings(self) -> int:
        """Readings in the window now."""
        return len(self._samples)

    @property
    def learned(self) -> bool:
        s = self.settings
        return (len(self._samples) >= s.min_samples and self._open > 0
                and self._samples[-1][0] - self._samples[0][0] >= s.warmup_s)

    def _trim(self, now: float) -> None:
        horizon = now - self.settings.window_s
        while self._samples and self._samples[0][0] < horizon:
            _, running, open_requests = self._samples.popleft()
            self._running -= running
            self._open -= open_requests
