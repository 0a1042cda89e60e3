"""The dispatcher's decision, as pure functions: hold or spawn, and how many on which board.

Theory of operation. The loop observes the proxy (requests queued for the models the boards
use, and the capacity of the routes serving them: in flight against the effective cap) and,
per board, how many tasks run and how many are ready. From those alone, :func:`decide` says

1. whether to hold: hysteresis between two watermarks. Holding starts when the backlog reaches
   ``high`` and ends only when it is below ``low`` *and* the routes have a free slot (in flight
   below the effective cap), so a backlog hovering around one value never flaps between
   spawning and holding, and spawning resumes only when the GPUs have room;
2. while not holding, how many running tasks to aim at. A worker spends part of its life off
   the GPU (starting, running tools, its own thinking), so the GPUs stay busy only with more
   running tasks than slots, some of them already waiting in the queue when a slot frees (a
   worker needs seconds from spawn to its first request): the target is
   ``ceil(cap * tasks_per_slot)``, where ``tasks_per_slot`` is learned from the running tasks
   (:mod:`.ratio`), and ``max_running``, when given, is a ceiling on top;
Guarantee: no grant while holding (so none from the moment the backlog reaches ``high`` until
it is below ``low`` with a slot free); the grants never take the sum of running tasks plus
grants over the target nor over ``max_running``, never exceed ``allowance``, nor a board's
ready count.
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


def next_holding(holding: bool, backlog: int, marks: Watermarks, gpu_full: bool = False) -> bool:
    """Hysteresis: start holding at ``high``; keep holding until below ``low`` with a free slot."""
    if holding:
        return backlog >= marks.low or gpu_full
    return backlog >= marks.high


def fair_grants(
    free: int, boards: Mapping[str, BoardLoad], tiebreak: Sequence[str] = ()
) -> dict[str, int]:
    """Hand ``free`` slots one by one to the least-loaded board that still has ready work."""
    order = {slug: i for i, slug in enumerate(tiebreak)}
    last = len(order)
    load = {slug: b.running for slug, b in boards.items() if b.ready > 0}
    left = {slug: boards[slug].ready for slug in load}
    grants: dict[str, int] = {}
    for _ in range(max(free, 0)):
        if not load:
            break
        slug = min(load, key=lambda s: (load[s], order.get(s, last), s))
        grants[slug] = grants.get(slug, 0) + 1
        load[slug] += 1
        left[slug] -= 1
        if left[slug] == 0:
            del load[slug]
    return grants


def target_running(cap: int | None, tasks_per_slot: float,
                   max_running: int | None) -> int | None:
    """Running tasks that keep ``cap`` slots busy, under the ceiling; None: nothing to aim at."""
    target = None if cap is None else math.ceil(cap * tasks_per_slot - 1e-9)
    if max_running is not None:
        target = max_running if target is None else min(target, max_running)
    return target


def decide(
    *,
    holding: bool,
    backlog: int,
    marks: Watermarks,
    boards: Mapping[str, BoardLoad],
    max_running: int | None = None,
    cap: int | None = None,
    in_flight: int = 0,
    tasks_per_slot: float = 1.0,
    allowance: int | None = None,
    tiebreak: Sequence[str] = (),
) -> Decision:
    """The whole tick decision; see the module docstring."""
    gpu_full = cap is not None and in_flight >= cap
    now_holding = next_holding(holding, backlog, marks, gpu_full)
    target = target_running(cap, tasks_per_slot, max_running)
    if now_holding:
        if not holding:
            why = f"hold: backlog {backlog} >= high {marks.high}"
        elif backlog >= marks.low:
            why = f"hold: backlog {backlog} >= low {marks.low}"
        else:
            why = f"hold: backlog {backlog} < low {marks.low} but GPU full ({in_flight}/{cap})"
        return Decision(holding=True, reason=why, hold_reason=HoldReason.BACKLOG_HIGH,
                        target=target)
    prefix = f"resume: backlog {backlog} < low {marks.low}, a slot free; " if holding else ""
    running = sum(b.running for b in boards.values())
    ready = sum(b.ready for b in boards.values())
    room = 0 if target is None else max(target - running, 0)
    if target is None:
        why = "no target: the models are uncapped and no --max-running is given"
    elif ready == 0:
        why = "nothing ready"
    elif room == 0:
        why = f"at target: {running} running of {target}"
    else:
        free = room if allowance is None else min(room, max(allowance, 0))
        grants = fair_grants(free, boards, tiebreak)
        why = f"spawn {sum(grants.values())}: {room} below target {target}"
        if allowance is not None and allowance < room:
            why += f" (ramp allows {max(allowance, 0)})"
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
