"""The dispatcher's decision, as pure functions: hold or spawn, and how many on which board.

Theory of operation. The loop observes the proxy (requests queued for the models the boards
use, and the capacity of the routes serving them: in flight against the effective cap) and,
per board, how many tasks run and how many are ready. From those alone, :func:`decide` says

1. whether to hold: hysteresis between two watermarks. Holding starts when the backlog reaches
   ``high`` and ends only when it falls below ``low``, so a backlog hovering around one value
   never flaps between spawning and holding -- or, below ``high``, when the ``forecast`` (the
   backlog expected by the time a worker spawned now sends its first request, see
   :mod:`.forecast`) is below ``low``: a worker takes seconds to start, and one started only
   once the queue is empty arrives to an idle GPU;
2. while not holding, how many running tasks the GPUs want. A worker spends part of its life
   off the GPU (starting, running tools, its own thinking), so the GPUs stay busy only with more
   running tasks than slots -- some requests already waiting when a slot frees, since a worker
   needs seconds from spawn to its first request. The free capacity for the tasks is the cap
   less what outside traffic holds (``outside``: requests on the routes not from the tasks),
   and the target is ``ceil(free capacity * tasks_per_slot)``, where ``tasks_per_slot`` is
   learned from the running tasks (:mod:`.ratio`); ``max_running``, when given, is a ceiling;
3. how many new workers each board may start: the room under the target, under the
   ``allowance`` of a ramp after an outage, and under the queue's room: the queue the workers
   would make if every running task without an open request (``pending``: starting, running a
   tool) sent one now must stay below ``high`` (the queue as it is, not as forecast: a
   dispatch call takes seconds, and requests keep arriving meanwhile), so the workers do not
   hold themselves (when all the ready work fits in that room it may start above the target:
   the target bounds a surplus drawn from a backlog, and held there a run's last tasks waited
   for a running one to end); and under the slots for the
   tasks less the workers still ``starting`` (spawned, no request sent yet): workers that
   start together compete for the host's CPUs -- on the bench machine six starting at once
   took 16-25 s to their first request, three took 8-9 s -- and a surplus worker is only
   needed once a slot frees, so the next wave starts as the first one reaches the GPU. That
   room is handed out one at a time to the board with the
   fewest tasks running (counting the grants so far) that still has ready work. That is
   max-min fairness over running tasks: boards with ready work converge to equal shares, and
   a board that grew alone while others were idle receives nothing until the others catch up
   (its workers are never stopped). Ties go to the board with the most ready work left, so the
   boards drain together (a board left behind ends the run with its last tasks alone on the
   GPU), then by ``tiebreak`` order, which the loop rotates every tick so no board always wins
   the odd slot.

Guarantee: no grant while holding (so none from the moment the backlog reaches ``high`` until
it is below ``low``, or below ``high`` with a forecast below ``low``; never one while the
backlog is at or above ``high``, whatever the forecast); the grants never take the sum of
running tasks plus grants over ``max_running``, nor over the target unless all the ready work
fits in the queue's room, never exceed
``allowance``, nor the queue's room, nor a board's ready count, nor (with a cap) the slots for
the tasks less the workers starting.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class HoldReason(enum.Enum):
    """Why nothing is spawned although there may be work: shown on /status and /metrics."""

    #: the proxy's queue reached the high watermark (held until below the low one)
    BACKLOG_HIGH = "backlog_high"
    #: the proxy answered, but not with a backlog for the watched models
    BACKLOG_UNKNOWN = "backlog_unknown"
    #: the proxy's status could not be read at all
    PROXY_UNREACHABLE = "proxy_unreachable"
    #: another dispatcher holds the lock of every board with ready work
    LOCKED_OUT = "locked_out"


@dataclass(frozen=True, slots=True)
class Watermarks:
    """Backlog thresholds: hold at ``high`` or more, resume below ``low``."""

    high: int
    low: int

    def __post_init__(self) -> None:
        if self.low < 0 or self.high < 1:
            raise ValueError("watermarks must be positive")
        if self.low >= self.high:
            raise ValueError(f"low watermark ({self.low}) must be below high ({self.high})")


@dataclass(frozen=True, slots=True)
class BoardLoad:
    """What the policy needs to know about one board."""

    running: int
    ready: int


@dataclass(frozen=True, slots=True)
class Decision:
    holding: bool
    #: one short phrase for the tick's log line
    reason: str
    #: new workers each board may start this tick (boards with no grant are absent)
    grants: Mapping[str, int] = field(default_factory=dict)
    #: room under the target before granting (what the ramp or ready work may leave unused)
    free_slots: int = 0
    #: set while holding
    hold_reason: HoldReason | None = None
    #: running tasks aimed at (None: no cap and no --max-running)
    target: int | None = None


def blocked(reason: HoldReason, text: str) -> Decision:
    """A hold the loop decides before the policy runs (no usable reading, no lock)."""
    return Decision(holding=True, reason=text, hold_reason=reason)


def next_holding(holding: bool, backlog: int, marks: Watermarks,
                 forecast: int | None = None) -> bool:
    """Hysteresis: start holding at ``high``, keep holding until below ``low`` -- or until
    below ``high`` with the ``forecast`` below ``low``."""
    if holding:
        if forecast is not None and backlog < marks.high and forecast < marks.low:
            return False
        return backlog >= marks.low
    return backlog >= marks.high


def fair_grants(
    free: int, boards: Mapping[str, BoardLoad], tiebreak: Sequence[str] = ()
) -> dict[str, int]:
    """Hand ``free`` slots one by one to the least-loaded board that still has ready work;
    between boards equally loaded, to the one with the most ready work left (the boards drain
    together, so none is left with its last long task to start alone at the end), then by
    ``tiebreak``."""
    order = {slug: i for i, slug in enumerate(tiebreak)}
    last = len(order)
    load = {slug: b.running for slug, b in boards.items() if b.ready > 0}
    left = {slug: boards[slug].ready for slug in load}
    grants: dict[str, int] = {}
    for _ in range(max(free, 0)):
        if not load:
            break
        slug = min(load, key=lambda s: (load[s], -left[s], order.get(s, last), s))
        grants[slug] = grants.get(slug, 0) + 1
        load[slug] += 1
        left[slug] -= 1
        if left[slug] == 0:
            del load[slug]
    return grants


def target_running(cap: int | None, tasks_per_slot: float, max_running: int | None,
                   outside: int = 0) -> int | None:
    """Running tasks that keep the slots outside traffic leaves busy, under the ceiling;
    None: nothing to aim at."""
    target = None if cap is None else math.ceil(max(cap - outside, 0) * tasks_per_slot - 1e-9)
    if max_running is not None:
        target = max_running if target is None else min(target, max_running)
    return target


def queue_room_for(marks: Watermarks, backlog: int, cap: int | None, in_flight: int,
                   pending: int) -> int:
    """New workers that fit before the queue would reach ``high``, if the ``pending`` workers
    (running, no request open) all asked now; unbounded (a large number) without a cap."""
    if cap is None:
        return 1 << 30
    # free slots absorb requests first; what is left queues behind the backlog
    return max(cap - in_flight - pending + marks.high - 1 - backlog, 0)


def decide(
    *,
    holding: bool,
    backlog: int,
    marks: Watermarks,
    boards: Mapping[str, BoardLoad],
    max_running: int | None = None,
    cap: int | None = None,
    outside: int = 0,
    in_flight: int = 0,
    pending: int = 0,
    tasks_per_slot: float = 1.0,
    allowance: int | None = None,
    tiebreak: Sequence[str] = (),
    forecast: int | None = None,
    starting: int = 0,
    pending_known: bool = False,
) -> Decision:
    """The whole tick decision; see the module docstring."""
    if forecast is not None:
        forecast = min(forecast, backlog)
    now_holding = next_holding(holding, backlog, marks, forecast)
    target = target_running(cap, tasks_per_slot, max_running, outside)
    if now_holding:
        if holding:
            why = f"hold: backlog {backlog} >= low {marks.low}"
        else:
            why = f"hold: backlog {backlog} >= high {marks.high}"
        return Decision(holding=True, reason=why, hold_reason=HoldReason.BACKLOG_HIGH,
                        target=target)
    prefix = ""
    if holding and backlog < marks.low:
        prefix = f"resume: backlog {backlog} < low {marks.low}; "
    elif holding:
        prefix = f"resume: backlog {backlog} forecast {forecast} < low {marks.low}; "
    running = sum(b.running for b in boards.values())
    ready = sum(b.ready for b in boards.values())
    room = 0 if target is None else max(target - running, 0)
    queue_room = queue_room_for(marks, backlog, cap, in_flight, pending)
    # The target bounds a surplus drawn from a backlog of ready work. Ready work that all
    # fits in the queue's room starts now: held at the target, the last ready tasks of a run
    # waited 5+ s for a running one to end, and each such wait was the run's end (issue-14
    # bench); started, they only queue (below the high mark, with every pending worker asking).
    # Only with ``pending_known`` (the workers' requests attributed): else pending reads 0.
    fits = (pending_known and target is not None and cap is not None
            and 0 < ready <= queue_room and ready > room)
    if fits:
        ceiling = None if max_running is None else max(max_running - running, 0)
        room = ready if ceiling is None else max(min(ready, ceiling), room)
    if target is None:
        why = "no target: the models are uncapped and no --max-running is given"
    elif ready == 0:
        why = "nothing ready"
    elif room == 0:
        why = f"at target: {running} running of {target}"
    elif queue_room == 0:
        why = f"queue full soon: {pending} starting would queue behind {in_flight} in flight"
    else:
        free = room if allowance is None else min(room, max(allowance, 0))
        free = min(free, queue_room)
        start_room = None if cap is None else max(cap - outside - max(starting, 0), 0)
        if start_room is not None:
            free = min(free, start_room)
        grants = fair_grants(free, boards, tiebreak)
        why = f"spawn {sum(grants.values())}: {room} below target {target}"
        if fits:
            why = f"spawn {sum(grants.values())}: the {ready} ready fit in the queue's room"
        if allowance is not None and allowance < room:
            why += f" (ramp allows {max(allowance, 0)})"
        elif queue_room < room and (start_room is None or queue_room <= start_room):
            why += f" (queue room {queue_room})"
        elif start_room is not None and start_room < room:
            why += f" (at most {cap - outside} starting at once; {max(starting, 0)} are)"
        return Decision(holding=False, reason=prefix + why, grants=grants, free_slots=room,
                        target=target)
    return Decision(holding=False, reason=prefix + why, free_slots=room, target=target)


def ramp_allowance(elapsed_s: float, spawned: int) -> int:
    """Slow start: up to 1 spawn in the first second of a ramp, 2 in the next, then 4, ...

    ``spawned`` is what the ramp already started; the allowance is what it may start now.
    """
    second = max(int(elapsed_s), 0)
    cumulative = (1 << min(second + 1, 30)) - 1
    return max(cumulative - spawned, 0)
