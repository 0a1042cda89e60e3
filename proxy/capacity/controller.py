"""The adaptive cap of one upstream (or GPU): a strategy object fed one sample per request.

Theory of operation
-------------------
The controller owns one number, ``cap``, between ``floor`` and ``ceiling``. Samples
(``signals.Sample``) are gathered into *windows*; a window closes once it holds enough OK
samples (``window_samples``, at least the cap) and lasts at least ``window_s``. Samples of
requests that went upstream before the last change of cap are dropped: they ran under another
load. Each closed window compares its median TPOT and normalised TTFT with their *baseline*
(the no-load values) and takes one decision:

- errors (upstream 429/503, timeouts, connection errors): multiplicative decrease
  (``cap * ERROR_DECREASE``), at most once per window;
- ratio (the worse of TPOT / baseline and TTFT / baseline) above ``1 + tolerance`` in two
  windows running (one may be noise), or above ``1 + 2 * tolerance`` once: shrink along the
  gradient, ``cap * (1 + tolerance) / ratio``, never by more than half; but when the last
  shrink brought no relief (the ratio's excess over 1 kept more than ``NO_RELIEF`` of itself),
  the latency is not this upstream's load (a busy host, an engine slower at any load): the
  window's medians become the baseline and the cap holds, instead of sliding to the floor;
- the engine reports a waiting queue in a reading taken since the last change of cap, while
  this upstream's load filled the cap: the engine runs all it can (another tenant may hold
  the rest), so shrink by the queue's length (at most by half) whatever the latency says;
  while the engine reports a queue, a rise a shrink did not relieve is still this load, never
  a new baseline;
- ratio within tolerance, the cap was actually reached in the window (growth is meaningless
  while the load does not fill the cap), and the engine does not report a waiting queue or a
  nearly full KV cache in a reading taken since the last change (growth must not outrun the
  poller, and a try of the knee has not held before the engine said so), and, where it
  reports what it runs and its slot count is known, the latest reading since the change left
  room for one more of ours (slots less others' share above the cap): grow by one;
- otherwise hold.

Stability at the knee: a shrink right after a growth marks the cap that failed as the
*knee*; growing to the knee again waits ``backoff`` windows, doubling after every failed try
(up to ``MAX_BACKOFF_WINDOWS``), reset by a try that holds. Under steady load the cap sits
at the knee minus one and visits the knee once per backoff: one step of movement at most.

Baseline (``baseline.py``): the first window's medians, then a slow moving average of the
windows that stay within half the tolerance (a lucky fast window moves it a little, an
overloaded one not at all), re-probed every ``probe_interval_s``: for one window the cap drops
by a quarter, that window's medians replace the baseline, and the previous cap comes back. A cap stuck at the floor with a high ratio also takes its medians as the new
baseline (the engine got slower at any load: a model change, a slower GPU).

Engine occupancy (``occupancy.py``): the slot count, reported (llama.cpp ``--parallel``, which
also lowers the effective ceiling) or learnt from readings of a full engine, and the share
other tenants hold (the engine's running + waiting less ours); when the slots others leave
are fewer than the cap, the cap drops to them at the next reading, whether or not our load
fills it. Stale engine signals are ignored (latency alone decides). Time comes from one
injected clock; nothing here sleeps or does I/O.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .baseline import Baseline
from .engines import EngineSignals
from .occupancy import Occupancy
from .signals import Outcome, Sample, WindowStats

ERROR_DECREASE = 0.7
MAX_SHRINK = 0.5
MAX_BACKOFF_WINDOWS = 8
#: KV cache use at or above which growth stops
KV_FULL = 0.9
#: a baseline probe lowers the cap by a quarter (at least one) for one window
PROBE_DROP = 4
#: a shrink relieved the latency when the ratio's excess fell below this share of what it was
NO_RELIEF = 0.75


class Phase(enum.Enum):
    STARTING = "starting"  # no baseline yet
    STEADY = "steady"
    PROBING = "probing"  # measuring the baseline below the cap


class Reason(enum.Enum):
    """Why the cap last changed (shown in /throttle/status)."""

    START = "start"
    GROW = "latency near baseline"
    GRADIENT = "latency rising"
    ERRORS = "upstream errors"
    PROBE = "baseline probe"
    PROBE_DONE = "baseline probe done"
    SLOTS = "engine slot count"
    ENGINE_QUEUE = "engine queue"
    OTHERS = "engine slots full (ours and others')"
    CONFIG = "configuration"
    SHARED = "shared cap from another host"


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    floor: int = 1
    ceiling: int = 64
    initial: int | None = None  # None: the floor
    tolerance: float = 0.15
    window_s: float = 1.0
    window_samples: int = 8
    probe_interval_s: float = 60.0
    #: engine signals older than this are ignored
    engine_stale_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Change:
    at: float
    old: int
    new: int
    reason: Reason


class AdaptiveCap:
    """One adaptive cap. ``record`` samples; ``cap`` is the number the store enforces."""

    def __init__(self, settings: ControllerSettings,
                 clock: Callable[[], float] = time.monotonic):
        if not 1 <= settings.floor <= settings.ceiling:
            raise ValueError("need 1 <= floor <= ceiling")
        self.settings = settings
        self._clock = clock
        now = clock()
        start = settings.initial if settings.initial is not None else settings.floor
        self.cap = min(max(start, settings.floor), settings.ceiling)
        self.phase = Phase.STARTING
        self.baseline = Baseline()
        self.last: WindowStats | None = None
        self.last_ratio: float | None = None
        self.last_change = Change(now, self.cap, self.cap, Reason.START)
        self.engine: EngineSignals | None = None
        self.in_flight = 0
        self._window: list[Sample] = []
        self._window_start = now
        self._window_peak = 0
        self._changed_at = now  # samples started before this ran under another cap
        self._knee: int | None = None
        self._backoff = 1
        self._since_knee_try = 0
        self._grew_last = False
        self._bad_streak = 0
        #: the ratio that made the last shrink (None: no shrink since a good window)
        self._shrunk_at: float | None = None
        self._next_probe = now + settings.probe_interval_s
        self._probe_return = self.cap
        #: the engine's slot count, fullness and others' share (``occupancy.py``)
        self.occupancy = Occupancy(relearn_s=settings.probe_interval_s)
        #: whether engine readings are of this controller's own engine and our in-flight
        #: count is all of ours there (off for a GPU fed by several upstreams, and once the
        #: shared lease holder feeds the pool's count: others' share is then unknown)
        self.owns_engine = True
        self._poll_peak = 0  # our peak in flight since the engine poll began
        #: listeners called with every change (the capacity manager applies it to the store)
        self.listeners: list[Callable[[AdaptiveCap, Change], None]] = []

    # -- inputs ------------------------------------------------------------------------------

    def started(self) -> None:
        """A request of this upstream went out (for the in-window peak)."""
        self.in_flight += 1
        self._window_peak = max(self._window_peak, self.in_flight)
        self._poll_peak = max(self._poll_peak, self.in_flight)

    def polling(self) -> None:
        """The engine poller is about to read: ours at the engine are counted from now."""
        self._poll_peak = self.in_flight

    def observe_in_flight(self, count: int) -> None:
        """In flight across every host (the shared lease holder reads the pool's count)."""
        self._window_peak = max(self._window_peak, count)
        self.owns_engine = False  # other hosts' requests count as ours: others unknown

    def finished(self, sample: Sample) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.record(sample)

    def record(self, sample: Sample) -> None:
        if sample.outcome is Outcome.IGNORED or sample.started_at < self._changed_at:
            return
        self._window.append(sample)
        if sample.outcome.is_error:
            self._on_errors()
            return
        now = self._clock()
        ok = sum(1 for s in self._window if s.outcome is Outcome.OK)
        if ok >= max(self.settings.window_samples, self.cap) and \
                now - self._window_start >= self.settings.window_s:
            self._close_window(now)

    def set_engine(self, signals: EngineSignals | None) -> None:
        self.engine = signals
        if signals is not None:
            ours = max(self._poll_peak, self.in_flight) if self.owns_engine else None
            self.occupancy.observe(signals, ours)
        self._poll_peak = self.in_flight
        ceiling = self.ceiling
        if self.cap > ceiling:
            self._set(ceiling, Reason.SLOTS)
            return
        room = self.occupancy.room(self._clock(), self.settings.engine_stale_s)
        if room is not None and self.owns_engine and self.fresh_engine() is not None and \
                max(self.settings.floor, room) < self.cap:
            self._set(max(self.settings.floor, room), Reason.OTHERS)  # others hold the rest

    def adopt(self, cap: int, reason: Reason = Reason.SHARED) -> None:
        """Take a cap decided elsewhere (another host's controller, a reload)."""
        self._set(min(max(cap, self.settings.floor), self.settings.ceiling), reason)

    # -- derived -----------------------------------------------------------------------------

    def fresh_engine(self) -> EngineSignals | None:
        e = self.engine
        if e is None or self._clock() - e.fetched_at > self.settings.engine_stale_s:
            return None
        return e

    @property
    def ceiling(self) -> int:
        """The configured ceiling, lowered to the engine's slot count when one is known."""
        e = self.fresh_engine()
        if e is not None and e.slots_total:
            return max(self.settings.floor, min(self.settings.ceiling, e.slots_total))
        return self.settings.ceiling

    def growth_blocked(self) -> str | None:
        e = self.fresh_engine()
        if e is None:
            return None
        if e.waiting:
            return f"engine queue {e.waiting}"
        if e.kv_usage is not None and e.kv_usage >= KV_FULL:
            return f"KV cache {e.kv_usage:.0%}"
        if e.fetched_at < self._changed_at or (
                e.running is not None and not self.occupancy.read_since_change):
            return "engine not read since the last change"
        return self.occupancy.growth_blocked(self._clock(), self.settings.engine_stale_s,
                                             self.cap)

    def _engine_queue_since_change(self) -> int:
        """The engine's waiting queue in a fresh reading taken under the current cap."""
        e = self.fresh_engine()
        if e is None or e.fetched_at < self._changed_at or not e.waiting or (
                e.running is not None and not self.occupancy.read_since_change):
            return 0  # (a reading that made the last change is not one taken under it)
        return e.waiting

    # -- decisions ---------------------------------------------------------------------------

    def _on_errors(self) -> None:
        self._set(max(self.settings.floor, math.floor(self.cap * ERROR_DECREASE)), Reason.ERRORS)
        if self.phase is Phase.PROBING:
            self.phase = Phase.STEADY

    def _close_window(self, now: float) -> None:
        stats = WindowStats.of(self._window)
        peak = self._window_peak
        self.last = stats
        self._window = []
        self._window_start = now
        self._window_peak = self.in_flight
        if stats.tpot_s is None and stats.ttft_s is None:
            return
        if self.phase is Phase.PROBING:
            self.baseline = self.baseline.taken(stats)
            self.phase = Phase.STEADY
            self._set(max(self.settings.floor, min(self._probe_return, self.ceiling)),
                      Reason.PROBE_DONE)
            return
        if self.phase is Phase.STARTING:
            self.baseline = self.baseline.taken(stats)
            self.phase = Phase.STEADY
        ratio = self.baseline.ratio(stats)
        self.last_ratio = ratio
        tolerance = self.settings.tolerance
        queued = self._engine_queue_since_change()
        if queued and peak >= self.cap and self.cap > self.settings.floor:
            # past what the engine runs at once: the excess waits there, before its first token
            if self._grew_last:
                self._knee = self.cap
                self._backoff = min(MAX_BACKOFF_WINDOWS, self._backoff * 2)
            self._bad_streak = 0
            shrink = min(queued, math.ceil(self.cap * MAX_SHRINK))
            self._set(max(self.settings.floor, self.cap - shrink), Reason.ENGINE_QUEUE)
            return
        if ratio <= 1.0 + tolerance / 2:
            self.baseline = self.baseline.followed(stats)
        self._bad_streak = self._bad_streak + 1 if ratio > 1.0 + tolerance else 0
        if not self._bad_streak:
            self._shrunk_at = None
        # one window over tolerance may be noise (a scheduler hiccup): act on two in a row,
        # or at once on a clear overload
        if self._bad_streak >= 2 or ratio > 1.0 + 2 * tolerance:
            self._bad_streak = 0
            shrunk_at = self._shrunk_at
            engine = self.fresh_engine()
            if self.cap <= self.settings.floor or (
                    shrunk_at is not None and ratio - 1.0 > (shrunk_at - 1.0) * NO_RELIEF
                    and not (engine is not None and engine.waiting)):
                # slower at any load (a smaller cap did not help): the baseline moved
                self._shrunk_at = None
                self.baseline = self.baseline.taken(stats)
                return
            if self._grew_last:
                self._knee = self.cap
                self._backoff = min(MAX_BACKOFF_WINDOWS, self._backoff * 2)
            target = self.cap * max(MAX_SHRINK, (1.0 + tolerance) / ratio)
            new = max(self.settings.floor, min(self.cap - 1, math.floor(target)))
            self._set(new, Reason.GRADIENT)
            self._shrunk_at = ratio
            return
        if ratio > 1.0 + tolerance:
            return  # wait for the next window to confirm
        engine = self.fresh_engine()
        if engine is not None and engine.fetched_at < self._changed_at:
            return  # the engine's word on this cap is still to come: a try has not held yet
        if self._grew_last and self._knee is not None and self.cap >= self._knee:
            self._knee, self._backoff = None, 1  # the try held: the knee was not there
        self._grew_last = False
        if now >= self._next_probe and self.cap > self.settings.floor:
            self._probe_return = self.cap
            self.phase = Phase.PROBING
            self._next_probe = now + self.settings.probe_interval_s
            self._set(max(self.settings.floor, self.cap - max(1, self.cap // PROBE_DROP)),
                      Reason.PROBE)
            return
        if ratio > 1.0 + tolerance / 2 or peak < self.cap or self.growth_blocked():
            return
        if self.cap >= self.ceiling:
            return
        if self._knee is not None and self.cap + 1 >= self._knee:
            self._since_knee_try += 1
            if self._since_knee_try < self._backoff:
                return
            self._since_knee_try = 0
        self._set(self.cap + 1, Reason.GROW)
        self._grew_last = True

    def _set(self, new: int, reason: Reason) -> None:
        now = self._clock()
        if reason is not Reason.GROW:
            self._grew_last = False
        self._shrunk_at = None  # GRADIENT sets it again after this
        self._window = []
        self._window_start = now
        self._window_peak = self.in_flight
        self._changed_at = now
        self.occupancy.changed()
        if new == self.cap:
            return
        change = Change(now, self.cap, new, reason)
        self.cap = new
        self.last_change = change
        for listener in self.listeners:
            listener(self, change)

    # -- observation -------------------------------------------------------------------------

    def status(self) -> dict:
        """The controller's state for /throttle/status (times as ages in seconds)."""
        now = self._clock()
        e = self.engine
        last = self.last
        return {
            "cap": self.cap,
            "ceiling": self.ceiling,
            "configured_ceiling": self.settings.ceiling,
            "floor": self.settings.floor,
            "phase": self.phase.value,
            "baseline": {"tpot_s": self.baseline.tpot_s, "ttft_s": self.baseline.ttft_s},
            "current": {
                "tpot_s": last.tpot_s if last else None,
                "ttft_s": last.ttft_s if last else None,
                "ratio": self.last_ratio,
            },
            "knee": self._knee,
            "engine_slots": self.occupancy.slots(now),
            "engine_others": self.occupancy.others(now, self.settings.engine_stale_s),
            "growth_blocked": self.growth_blocked(),
            "engine": None if e is None else e.to_dict(now - e.fetched_at),
            "last_change": {
                "age_s": round(now - self.last_change.at, 3),
                "from": self.last_change.old,
                "to": self.last_change.new,
                "reason": self.last_change.reason.value,
            },
        }
