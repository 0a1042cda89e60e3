"""Which boards a tick looks at, what each weighs in the policy, and the fair order of grants.

Pure functions of the board counts, kept apart from the loop so that the rules read (and
test) alone: boards another companion holds still count their running tasks against
``--max-running`` but offer no ready tasks of ours; the order of grants turns by one board
each tick, so that no board is always served last.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from .hermes_model import BoardCounts
from .policy import BoardLoad, Decision, HoldReason, blocked
from .report import BoardTick


def select_boards(wanted: Sequence[str] | None,
                  counts: Mapping[str, BoardCounts]) -> tuple[list[str], list[str]]:
    """The boards to look at (all when none are named), and the named ones not found."""
    if wanted is None:
        return sorted(counts), []
    return ([slug for slug in wanted if slug in counts],
            [slug for slug in wanted if slug not in counts])


def board_loads(wanted: Sequence[str] | None, counts: Mapping[str, BoardCounts],
                owned: Collection[str]) -> dict[str, BoardLoad]:
    """Each board's weight in the policy; only the boards we hold offer ready tasks."""
    selected = wanted or tuple(counts)
    return {slug: BoardLoad(running=counts[slug].running,
                            ready=counts[slug].ready if slug in owned else 0)
            for slug in selected if slug in counts}


def rotation(owned: Collection[str], turn: int) -> list[str]:
    """The boards we hold, in the order grants go this ``turn`` (shifted by one each turn)."""
    order = sorted(owned)
    if order:
        shift = turn % len(order)
        order = order[shift:] + order[:shift]
    return order


def board_ticks(selected: Sequence[str], counts: Mapping[str, BoardCounts],
                taken: Collection[str], wall: float) -> dict[str, BoardTick]:
    """The report's line per board: its counts, and why it is left alone if it is."""
    ticks = {}
    for slug in selected:
        c = counts[slug]
        ticks[slug] = BoardTick(
            running=c.running, ready=c.ready, todo=c.todo, by_status=dict(c.by_status),
            oldest_ready_s=None if c.oldest_ready_at is None
            else max(wall - c.oldest_ready_at, 0.0))
        if slug in taken:
            ticks[slug].skipped = "another dispatcher holds its lock"
    return ticks


def locked_out(counts: Mapping[str, BoardCounts], owned: Collection[str],
               taken: Collection[str]) -> Decision | None:
    """A hold when the only ready tasks are on boards another companion holds: none of ours
    to start, and ``/status`` says why rather than "nothing ready"."""
    if taken and not any(counts[s].ready for s in owned) \
            and any(counts[s].ready for s in taken):
        ready_elsewhere = sum(counts[s].ready for s in taken)
        return blocked(HoldReason.LOCKED_OUT,
                       f"locked out: {ready_elsewhere} ready on boards another "
                       f"dispatcher holds ({','.join(sorted(taken))})")
    return None
