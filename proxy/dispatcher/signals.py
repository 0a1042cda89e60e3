"""What the proxy's reading says about the workers: their open requests, the outside traffic,
and the running tasks about to ask (pure functions of one reading and the board counts)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .backlog import Backlog
from .hermes_model import BoardCounts
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


@dataclass(frozen=True, slots=True)
class Finishing:
    """Live workers of tasks no longer running: a worker makes its final LLM call after
    ``kanban_complete`` marked its task done, so the board counts no longer show it."""

    #: those with a request open now (their final call)
    asking: int = 0
    #: those not yet seen asking since their task finished: each may ask any moment
    to_ask: int = 0


class FinishingTracker:
    """Remembers which finished tasks' workers were seen making their final call, so one that
    did and has not exited yet (a second or two) no longer counts as about to ask."""

    __slots__ = ("_asked",)

    def __init__(self) -> None:
        self._asked: frozenset[str] = frozenset()

    def observe(self, finishing: frozenset[str], asking_now: frozenset[str]) -> Finishing:
        """``finishing``: the probe's live workers of finished tasks; ``asking_now``: the
        attributed values with a request open."""
        asking = finishing & asking_now
        self._asked = (self._asked & finishing) | asking
        return Finishing(asking=len(asking), to_ask=len(finishing - self._asked))

    def saw_asking(self, finishing: frozenset[str], asking_now: frozenset[str]) -> None:
        """A reading between board reads (``finishing`` from the last one): a final call seen
        then counts as made. Only finished tasks' requests count: a running task's request is
        its first call, and its final one is still to come."""
        self._asked |= finishing & asking_now


def finishing_tasks(counts: Mapping[str, BoardCounts], loads: Mapping[str, BoardLoad]
                    ) -> frozenset[str]:
    """The probe's live workers of finished tasks on the boards in ``loads``."""
    return frozenset().union(*(counts[s].finishing for s in loads if s in counts))


def pending_workers(backlog: Backlog, loads: Mapping[str, BoardLoad],
                    finishing: Finishing = Finishing()) -> int:
    """Workers with no request open that may ask the GPU any moment: running tasks
    (starting, running a tool) and live workers of finished tasks not yet seen making their
    final call. 0 when requests are not attributed (then they cannot be told apart)."""
    if backlog.attributed_open is None:
        return 0
    running = sum(load.running for load in loads.values())
    # the running tasks' own open requests: the attributed ones less the final calls
    running_open = max(backlog.attributed_open - finishing.asking, 0)
    return max(running - running_open, 0) + finishing.to_ask


def starting_workers(backlog: Backlog, spawned_not_seen: int, running: int) -> int:
    """Workers spawned that have not sent their first request yet: the spawned tasks not seen
    asking, but never more than the running tasks without a request open (a task whose
    attribution the proxy folded into ``other`` is never seen by name; without attribution
    every request on the routes counts as a worker's)."""
    return max(min(spawned_not_seen, running - open_requests(backlog)), 0)
