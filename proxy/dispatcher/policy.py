"""The dispatcher's decision, as pure functions: hold or spawn, and how many on which board.

Theory of operation. Every tick the loop observes two things: the proxy's backlog (requests
queued for the models the boards use) and, per board, how many tasks run and how many are
ready. From those alone, :func:`decide` says

1. whether to hold: hysteresis between two watermarks. Holding starts when the backlog reaches
   ``high`` and ends only when it falls below ``low``, so a backlog hovering around one value
   never flaps between spawning and holding;
2. if not holding, how many new workers each board may start: the free slots under the global
   ``max_running`` cap, handed out one at a time to the board with the fewest tasks running
   (counting the grants so far) that still has ready work. That is max-min fairness over
   running tasks: boards with ready work converge to equal shares of the cap, and a board
   that grew alone while others were idle receives nothing until the others catch up (its
   workers are never stopped). Ties go by ``tiebreak`` order, which the loop rotates every tick
   so no board always wins the odd slot.

Guarantee: the grants never take the sum of running tasks plus grants over ``max_running``,
and never exceed a board's ready count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


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
    #: slots under the global cap before granting
    free_slots: int = 0


def next_holding(holding: bool, backlog: int, marks: Watermarks) -> bool:
    """Hysteresis: start holding at ``high``, keep holding until below ``low``."""
    if holding:
        return backlog >= marks.low
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


def decide(
    *,
    holding: bool,
    backlog: int,
    marks: Watermarks,
    max_running: int,
    boards: Mapping[str, BoardLoad],
    tiebreak: Sequence[str] = (),
) -> Decision:
    """The whole tick decision; see the module docstring."""
    now_holding = next_holding(holding, backlog, marks)
    if now_holding:
        if holding:
            why = f"hold: backlog {backlog} >= low {marks.low}"
        else:
            why = f"hold: backlog {backlog} >= high {marks.high}"
        return Decision(holding=True, reason=why)
    running = sum(b.running for b in boards.values())
    free = max(max_running - running, 0)
    ready = sum(b.ready for b in boards.values())
    grants = fair_grants(free, boards, tiebreak)
    if holding:
        prefix = f"resume: backlog {backlog} < low {marks.low}; "
    else:
        prefix = ""
    if ready == 0:
        why = "nothing ready"
    elif free == 0:
        why = f"at cap: {running} running of {max_running}"
    else:
        why = f"spawn {sum(grants.values())}: {free} free of {max_running}"
    return Decision(holding=False, reason=prefix + why, grants=grants, free_slots=free)
