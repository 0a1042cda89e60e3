"""What the proxy's reading says about the workers: their open requests, the outside traffic,
and the running tasks about to ask (pure functions of one reading and the board counts)."""

from __future__ import annotations

from collections.abc import Mapping

from .backlog import Backlog
from .hermes import BoardCounts
from .policy import BoardLoad


def open_requests(backlog: Backlog) -> int:
    """The workers' open requests: attributed ones, else everything on the watched routes."""
    if backlog.attributed_open is not None:
        return backlog.attributed_open
    return backlog.in_flight + backlog.queued


def outside_requests(backlog: Backlog) -> int:
    """Slots held by requests that are not the workers' (0 when nothing is attributed: then all
    of them count as the workers'). Queued outside requests are the watermarks' business."""
    if backlog.attributed_in_flight is None:
        return 0
    return max(backlog.in_flight - backlog.attributed_in_flight, 0)


def finishing_workers(counts: Mapping[str, BoardCounts], loads: Mapping[str, BoardLoad]) -> int:
    """Live workers of tasks already done (their final LLM call is still to come or open)."""
    return sum(len(counts[slug].finishing) for slug in loads if slug in counts)


def pending_workers(backlog: Backlog, counts: Mapping[str, BoardCounts],
                    loads: Mapping[str, BoardLoad]) -> int:
    """Workers with no request open -- running tasks (starting, running a tool) and live
    workers of finished tasks (their final turn): each may ask the GPU any moment. 0 when
    requests are not attributed (then they cannot be told apart)."""
    if backlog.attributed_open is None:
        return 0
    running = sum(load.running for load in loads.values())
    return max(running + finishing_workers(counts, loads) - backlog.attributed_open, 0)


def starting_workers(backlog: Backlog, spawned_not_seen: int, running: int) -> int:
    """Workers spawned that have not sent their first request yet: the spawned tasks not seen
    asking, but never more than the running tasks without a request open (a task whose
    attribution the proxy folded into ``other`` is never seen by name; without attribution
    every request on the routes counts as a worker's)."""
    return max(min(spawned_not_seen, running - open_requests(backlog)), 0)
