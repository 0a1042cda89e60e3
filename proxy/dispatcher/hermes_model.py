"""The Hermes facts and values the companion works with, apart from how they are read.

What ``--max`` means for each Hermes version (:func:`max_argument`), a board's task counts,
what one dispatch pass did, and the error of a failed call: shared by the CLI client
(:mod:`.hermes`), the read-only probe (:mod:`.sqlite_probe`), the loop and its views, so that
the two readers of Hermes stay apart, and a module that only handles the values needs neither.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

#: first release whose ``dispatch --max`` counts already-running tasks (PR #23295)
LIVE_CAP_SINCE = (0, 13, 0)
#: statuses a dispatch pass can start a worker for
SPAWNABLE = ("ready", "review")
#: statuses that still need the dispatcher (reclaim, promotion, spawning)
UNFINISHED = ("todo", "ready", "review", "running", "blocked", "scheduled", "triage")
#: statuses always exported on /metrics (0 when a board has none)
REPORTED = ("triage", "todo", "ready", "running", "blocked", "done", "archived")
#: fields of ``dispatch --json`` that name workers that failed: died, ran past their limit,
#: or were blocked after too many failures
WORKER_FAILURES = ("crashed", "timed_out", "auto_blocked")

_VERSION_RE = re.compile(r"\bv?(\d+)\.(\d+)\.(\d+)\b")
_STDERR_EXCERPT = 300


class HermesError(Exception):
    """A ``hermes`` call failed: non-JSON stdout, text on stderr, bad exit, or unexpected shape."""

    def __init__(self, command: Sequence[str], reason: str, stderr: str = "") -> None:
        self.command = tuple(command)
        self.reason = reason
        self.stderr = stderr
        detail = f": {stderr.strip()[:_STDERR_EXCERPT]}" if stderr.strip() else ""
        super().__init__(f"`{' '.join(self.command)}` {reason}{detail}")


class HermesTimeout(HermesError):
    """A ``hermes`` call ran past its timeout and was killed."""


class MaxSemantics(enum.Enum):
    """What ``hermes kanban dispatch --max N`` means for the installed Hermes."""

    #: N caps running tasks on the board (0.13.0 and later)
    RUNNING = "running"
    #: N caps the spawns of one pass (builds before PR #23295)
    SPAWNS = "spawns"


@dataclass(frozen=True, slots=True, order=True)
class HermesVersion:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> HermesVersion:
        match = _VERSION_RE.search(text)
        if match is None:
            raise ValueError(f"no version number in {text[:80]!r}")
        return cls(int(match[1]), int(match[2]), int(match[3]))

    @property
    def max_semantics(self) -> MaxSemantics:
        if (self.major, self.minor, self.patch) >= LIVE_CAP_SINCE:
            return MaxSemantics.RUNNING
        return MaxSemantics.SPAWNS

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def max_argument(semantics: MaxSemantics, running: int, grant: int) -> int:
    """The ``--max`` that lets a board start at most ``grant`` workers beyond ``running``.

    Under the live-cap meaning Hermes recounts running tasks itself; if some finished since we
    counted, it may start more than ``grant``, but the board still ends at or below
    ``running + grant``, which is what the global cap was computed with.
    """
    if grant <= 0:
        return 0
    if semantics is MaxSemantics.RUNNING:
        return running + grant
    return grant


@dataclass(frozen=True, slots=True)
class BoardCounts:
    """Task counts of one board, by status."""

    slug: str
    by_status: Mapping[str, int] = field(default_factory=dict)
    #: ``todo`` tasks whose parents are all done, ready at the next pass; None: not known
    #: (the CLI does not say, the SQLite probe does)
    promotable: int | None = None
    db_path: str | None = None
    #: Unix time since which the oldest ready task is ready; None: unknown (the CLI does not
    #: say) or nothing ready
    oldest_ready_at: float | None = None
    #: tasks no longer running whose worker process is still alive: a worker makes its final
    #: LLM call after ``kanban_complete`` has already marked its task done, so each of these
    #: may still ask the GPU; empty when not known (the CLI's counts cannot tell)
    finishing: frozenset[str] = frozenset()

    @property
    def running(self) -> int:
        return self.by_status.get("running", 0)

    @property
    def ready(self) -> int:
        """Tasks the next dispatch pass may start a worker for."""
        return sum(self.by_status.get(s, 0) for s in SPAWNABLE) + (self.promotable or 0)

    @property
    def todo(self) -> int:
        return self.by_status.get("todo", 0)

    @property
    def unfinished(self) -> int:
        return sum(self.by_status.get(s, 0) for s in UNFINISHED)


@dataclass(frozen=True, slots=True)
class DispatchOutcome:
    board: str
    max_arg: int
    spawned: tuple[str, ...]
    reclaimed: int
    crashed: tuple[str, ...]
    promoted: int
    raw: Mapping[str, Any]
    #: worker failures the pass found, by kind (see :data:`WORKER_FAILURES`)
    failures: Mapping[str, int] = field(default_factory=dict)


class BoardProbe(Protocol):
    """Counts running and ready tasks per board without changing any board."""

    async def board_counts(self) -> dict[str, BoardCounts]: ...
