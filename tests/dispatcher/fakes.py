"""Stand-ins for hermes, the proxy and the lock store in the loop tests: plain objects that
record calls, with state the tests edit (time is a fake clock too); ``make_dispatcher`` puts
a loop on them (``test_control``, ``test_signals``)."""

from __future__ import annotations

from typing import Any

from proxy.dispatcher.backlog import Backlog, BacklogError, ProxyUnreachable
from proxy.dispatcher.hermes_model import (
    BoardCounts,
    DispatchOutcome,
    HermesError,
    HermesVersion,
    MaxSemantics,
)
from proxy.dispatcher.lock import BoardLocks, NullLock
from proxy.dispatcher.loop import Dispatcher
from proxy.dispatcher.policy import Watermarks
from proxy.dispatcher.settings import DispatchSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeHermes:
    """Records dispatch calls; boards are plain dicts of status counts the test edits."""

    executable = "hermes"
    timeout_s = 5.0

    def __init__(self, boards: dict[str, dict[str, int]], version: str = "0.19.0") -> None:
        self.boards = boards
        self.calls: list[tuple[str, int]] = []
        self.fail_boards: set[str] = set()
        self.fail_counts = False
        #: what the next dispatch pass reports as worker failures (crashed, timed_out, ...)
        self.next_failures: dict[str, Any] = {}
        #: board -> done tasks whose worker still runs (its final turn to come)
        self.finishing: dict[str, frozenset[str]] = {}
        self._version = version

    async def version(self) -> HermesVersion:
        if self._version == "broken":
            raise HermesError(["hermes", "--version"], "printed no version")
        return HermesVersion.parse(self._version)

    async def board_counts(self) -> dict[str, BoardCounts]:
        if self.fail_counts:
            raise HermesError(["hermes", "kanban", "boards", "list"], "printed non-JSON output")
        return {slug: BoardCounts(slug, dict(c), finishing=self.finishing.get(slug, frozenset()))
                for slug, c in self.boards.items()}

    async def dispatch(self, board: str, max_spawn: int) -> DispatchOutcome:
        self.calls.append((board, max_spawn))
        if board in self.fail_boards:
            raise HermesError(["hermes", "kanban", "dispatch"], "wrote to stderr", "boom")
        c = self.boards[board]
        start = max(max_spawn - c.get("running", 0), 0) if max_spawn else 0
        n = min(start, c.get("ready", 0))
        c["ready"] = c.get("ready", 0) - n
        c["running"] = c.get("running", 0) + n
        failures = {k: len(v) if isinstance(v, list) else v
                    for k, v in self.next_failures.items()}
        crashed = tuple(self.next_failures.get("crashed", ()))
        self.next_failures = {}
        return DispatchOutcome(board, max_spawn, tuple(f"t{i}" for i in range(n)), 0, crashed,
                               0, {}, failures=failures)

    def command_line(self, args: Any) -> str:
        return "hermes " + " ".join(args)


class CheapHermes(FakeHermes):
    """Counts as cheap as the SQLite probe: the watcher reads the boards between ticks."""

    cheap = True


class FakeBacklog:
    def __init__(self, queued: int = 0) -> None:
        self.queued: int | None = queued
        #: what the proxy reports besides the queue: cap, in_flight, missing, attributed_open
        self.extra: dict[str, Any] = {}
        #: answer, but with a document the reader does not understand
        self.garbled = False
        self.reads = 0

    async def read(self) -> Backlog:
        self.reads += 1
        if self.garbled:
            raise BacklogError("status document has no models table")
        if self.queued is None:
            raise ProxyUnreachable("GET http://proxy/throttle/status: cannot connect (connection "
                                   "refused); is the proxy running there?")
        return Backlog(queued=self.queued, **self.extra)

    async def close(self) -> None:
        return None


class HeldElsewhere:
    description = "held by another companion"

    async def acquire(self) -> bool:
        return False

    async def renew(self) -> bool:
        return False

    async def release(self) -> None:
        return None


def make_dispatcher(boards: dict[str, dict[str, int]], *, cap: int | None = 3,
                    in_flight: int = 0, max_running: int | None = None,
                    taken: set[str] = frozenset(),  # type: ignore[assignment]
                    cheap: bool = False, **settings: Any
                    ) -> tuple[Dispatcher, FakeHermes, FakeBacklog, FakeClock]:
    """A loop on stand-ins: marks high 4 / low 1, ``--max`` counts running tasks, the proxy
    reporting ``cap`` and ``in_flight``; boards in ``taken`` are locked by another instance."""
    hermes = (CheapHermes if cheap else FakeHermes)(boards)
    source, clock = FakeBacklog(0), FakeClock()
    source.extra = {"cap": cap, "in_flight": in_flight}
    locks = BoardLocks(lambda slug: HeldElsewhere() if slug in taken else NullLock())
    s = DispatchSettings(marks=Watermarks(high=4, low=1), max_running=max_running,
                         semantics=MaxSemantics.RUNNING, **settings)
    d = Dispatcher(s, hermes=hermes, probe=hermes, backlog=source,  # type: ignore[arg-type]
                   locks=locks, clock=clock)
    return d, hermes, source, clock
