"""The engine's occupancy: its slot count, whether it was full, and the share others hold.

Theory of operation
-------------------
vLLM (``num_requests_running`` + ``waiting``), llama.cpp (``/slots``: total and busy) and the
project's mock say how many requests the engine runs and queues. Three facts follow, so the
adaptive cap need not probe past the engine's capacity to find it:

- **slots**: llama.cpp's reported total when there is one; otherwise *learnt*: ``running`` in
  a reading with ``waiting > 0`` (the engine was full then), the largest such value. A reading
  that runs more with nothing waiting means the engine got bigger: the learnt count is
  forgotten. Full readings that all run fewer (``RELEARN_READINGS`` in a row) mean it got
  smaller: their largest becomes the count. A learnt count unconfirmed for ``relearn_s`` is
  forgotten too, so one try past it now and then finds a bigger engine that only we use.
- **room to grow**: the cap grows only when the engine had a free slot for one more of ours
  in a reading taken since the cap last changed: the slots less others' share (the larger of
  the last two readings) above the cap, or, where ours are unknown, ``running < slots``.
- **others' share**: ``running + waiting - ours``, where ``ours`` is the peak of this
  upstream's own requests in flight during the poll (never fewer than the engine ran for us,
  so others are never overcounted), the smaller of the last two fresh readings (one reading
  caught between a request's end at the engine and at the proxy must not cut the cap).

Nothing here decides a cap or reads a clock; the controller feeds readings and asks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .engines import EngineSignals

#: full readings in a row that all run fewer than the learnt count before it is lowered
RELEARN_READINGS = 3
#: readings that must agree (their minimum counts) before others' share lowers the cap
OTHERS_READINGS = 2


@dataclass(frozen=True, slots=True)
class Reading:
    at: float
    running: int
    waiting: int
    #: others' requests at the engine (None: ours unknown, e.g. shared across hosts)
    others: int | None


class Occupancy:
    """Readings of one engine, as the adaptive cap of the upstream in front of it needs them."""

    def __init__(self, relearn_s: float):
        self.relearn_s = relearn_s
        self.learnt_slots: int | None = None
        self._learnt_at = 0.0
        self._smaller: list[int] = []  # running in consecutive full readings below the count
        self._latest: Reading | None = None  # the latest reading since the cap changed
        self._recent: deque[Reading] = deque(maxlen=OTHERS_READINGS)
        self.reported_slots: int | None = None

    def observe(self, signals: EngineSignals, ours: int | None) -> None:
        """One engine reading; ``ours``: this upstream's requests in flight meanwhile."""
        self.reported_slots = signals.slots_total or None
        running = signals.running
        if running is None:
            return
        waiting = signals.waiting or 0
        self._learn(running, waiting, signals.fetched_at)
        others = None if ours is None else max(0, running + waiting - ours)
        reading = Reading(signals.fetched_at, running, waiting, others)
        self._latest = reading
        self._recent.append(reading)

    def _learn(self, running: int, waiting: int, at: float) -> None:
        learnt = self.learnt_slots
        if waiting > 0 and running > 0:
            if learnt is None or running >= learnt:
                self.learnt_slots, self._learnt_at = running, at
                self._smaller = []
                return
            self._smaller.append(running)
            if len(self._smaller) >= RELEARN_READINGS:  # the engine got smaller
                self.learnt_slots, self._learnt_at = max(self._smaller), at
                self._smaller = []
            return
        self._smaller = []
        if learnt is not None and running > learnt:
            self.learnt_slots = None  # ran more with nothing waiting: the engine got bigger

    def slots(self, now: float) -> int | None:
        """The engine's slot count: reported, else learnt (None: unknown)."""
        if self.reported_slots:
            return self.reported_slots
        if self.learnt_slots is not None and now - self._learnt_at > self.relearn_s:
            self.learnt_slots = None  # unconfirmed too long: one try past it may find more
        return self.learnt_slots

    def changed(self) -> None:
        """The cap changed: readings from now on say how the engine takes the new one."""
        self._latest = None

    @property
    def read_since_change(self) -> bool:
        return self._latest is not None

    def growth_blocked(self, now: float, stale_s: float, cap: int) -> str | None:
        """Why one more of ours would find no free slot (None: it would, or unknown)."""
        slots = self.slots(now)
        latest = self._latest
        if slots is None or latest is None:
            return None
        known = [r.others for r in self._recent if now - r.at <= stale_s and r.others is not None]
        if latest.others is None or not known:  # ours unknown: the engine's own count
            if latest.running >= slots:
                return f"engine full ({latest.running} running of {slots} slots)"
            return None
        others = max(known)  # the larger share: growth waits until every reading has room
        if slots - others <= cap:
            return f"engine full ({slots} slots, others hold {others}, cap {cap})"
        return None

    def others(self, now: float, stale_s: float) -> int | None:
        """Others' requests at the engine: the least of the last readings, all fresh."""
        recent = [r for r in self._recent if now - r.at <= stale_s]
        if len(recent) < OTHERS_READINGS or any(r.others is None for r in recent):
            return None
        return min(r.others for r in recent if r.others is not None)

    def room(self, now: float, stale_s: float) -> int | None:
        """The slots others leave us (None: the slot count or others' share unknown)."""
        slots, others = self.slots(now), self.others(now, stale_s)
        return None if slots is None or others is None else slots - others
