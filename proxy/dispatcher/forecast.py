"""Looking one worker start-up ahead: how long a new worker takes to reach the GPU, and what
the proxy's queue will be by then.

A worker spawned now sends its first request only after its start-up (seconds: the ``hermes
kanban dispatch`` call, then the worker process itself). A dispatcher that resumes only once the
queue has emptied leaves the GPU idle for that whole start-up each time a hold ends (measured in
the issue-14 bench: the GPU drained to 0 of 3 busy slots for ~7 s after the outside burst). So:

* :class:`LeadTime` learns the start-up from the workers themselves: a spawned task's id is
  remembered with the time of the decision that started it, and the first reading of the proxy
  that shows a request attributed to that task gives one sample. The estimate is the median of
  the recent samples (one slow start does not move it much), the ``prior`` until there is one;
  the tasks still waiting for their first request are the workers ``starting``.
* :class:`BacklogTrend` fits a line to the recent readings of the queue and says what it will be
  ``ahead_s`` from now -- only ever lower than now (a queue that is draining); a growing queue
  is forecast as it is, so a forecast can end a hold sooner but never start one later.

* :class:`LastingOutside` says how many slots outside traffic (requests on the routes that are
  not the workers') holds for good: the least it held over the last ``window_s``. Read as it
  is, a burst that held every slot for a moment set the target to 0, so nothing was starting
  when it ended (issue 14's bench: 5 GPU-seconds idle after the outside burst); a burst is
  the watermarks' business (they hold spawns while it queues), steady outside traffic lowers
  the target.

The policy uses the forecast only below the high watermark; see :mod:`.policy`.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable


class LeadTime:
    """Seconds from the decision that spawns a worker to that worker's first request."""

    __slots__ = ("_samples", "_waiting", "horizon_s", "prior_s")

    def __init__(self, prior_s: float = 5.0, *, keep: int = 15, horizon_s: float = 120.0) -> None:
        self.prior_s = prior_s
        #: a spawned task not seen asking within this long (or 4 start-ups, at least 20 s, if
        #: shorter) is forgotten: it may never ask (its worker crashed, its attribution was
        #: folded into ``other``, or the proxy attributes nothing)
        self.horizon_s = horizon_s
        self._samples: deque[float] = deque(maxlen=keep)
        self._waiting: dict[str, float] = {}

    def spawned(self, now: float, tasks: Iterable[str]) -> None:
        for task in tasks:
            self._waiting.setdefault(task, now)

    def observe(self, now: float, asking: Iterable[str]) -> None:
        """``asking``: the task ids with a request open at the proxy now."""
        for task in asking:
            since = self._waiting.pop(task, None)
            if since is not None:
                self._samples.append(max(now - since, 0.0))
        horizon = min(self.horizon_s, max(4 * self.value(), 20.0))
        for task, since in list(self._waiting.items()):
            if now - since > horizon:
                del self._waiting[task]

    def value(self) -> float:
        return statistics.median(self._samples) if self._samples else self.prior_s

    @property
    def starting(self) -> int:
        """Spawned tasks not yet seen asking (within the horizon)."""
        return len(self._waiting)

    @property
    def learned(self) -> bool:
        return bool(self._samples)


class BacklogTrend:
    """A least-squares line through the queue readings of the last ``window_s`` seconds."""

    __slots__ = ("_readings", "min_span_s", "window_s")

    def __init__(self, window_s: float = 10.0, *, min_span_s: float = 3.0) -> None:
        self.window_s = window_s
        #: readings must span this long before a slope is trusted
        self.min_span_s = min_span_s
        self._readings: deque[tuple[float, int]] = deque()

    def observe(self, now: float, backlog: int) -> None:
        self._readings.append((now, backlog))
        while self._readings and self._readings[0][0] < now - self.window_s:
            self._readings.popleft()

    def slope(self) -> float | None:
        """Queue change per second; None: too few readings, or too short a span."""
        if len(self._readings) < 3 or \
                self._readings[-1][0] - self._readings[0][0] < self.min_span_s:
            return None
        n = len(self._readings)
        mean_t = sum(t for t, _ in self._readings) / n
        mean_q = sum(q for _, q in self._readings) / n
        var = sum((t - mean_t) ** 2 for t, _ in self._readings)
        if var <= 0:
            return None
        return sum((t - mean_t) * (q - mean_q) for t, q in self._readings) / var

    def forecast(self, backlog: int, ahead_s: float) -> int:
        """The queue ``ahead_s`` from now if it keeps draining as it has; never above
        ``backlog``, never below 0 (rounded to the nearest request)."""
        slope = self.slope()
        if slope is None or slope >= 0 or ahead_s <= 0:
            return backlog
        return min(max(round(backlog + slope * ahead_s), 0), backlog)


class LastingOutside:
    """The least outside traffic (slots) seen over the last ``window_s`` seconds."""

    __slots__ = ("_readings", "window_s")

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self._readings: deque[tuple[float, int]] = deque()

    def observe(self, now: float, outside: int) -> None:
        # a monotonic deque: a reading at or above a later one can never be the minimum again
        while self._readings and self._readings[-1][1] >= outside:
            self._readings.pop()
        self._readings.append((now, outside))
        while self._readings[0][0] < now - self.window_s:
            self._readings.popleft()

    def value(self, outside: int) -> int:
        """The lasting outside traffic, given the latest reading ``outside`` (observed)."""
        return min(self._readings[0][1], outside) if self._readings else outside
