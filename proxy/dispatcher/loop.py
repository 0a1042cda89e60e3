"""The companion's tick: observe, decide, dispatch, report.

One tick, in order:

1. read the backlog from the proxy; if that fails nothing is spawned this tick (a missing
   number must not read as "the GPUs are idle"), but maintenance still runs;
2. count tasks per board (``hermes kanban boards list --json`` or the read-only SQLite probe);
   if that fails the tick ends there and the next one retries;
3. renew or take the per-board locks; boards another companion holds still count against
   ``--max-running`` but are never dispatched by us;
4. :func:`policy.decide`: hold or not (hysteresis) and the fair grants;
5. one ``hermes kanban --board B dispatch --max N --json`` per board with a grant. A board not
   passed over for ``maintenance_interval_s`` gets ``--max 0`` (reclaims crashed workers,
   promotes finished parents' children, starts nothing) -- whether holding or not, since a
   crashed worker still counts as running until reclaimed;
6. one log line, metrics, and the report kept for ``/status``.

A failing ``hermes`` call fails that board's step only; it is logged and retried next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .backlog import BacklogError, BacklogSource
from .hermes import (
    BoardCounts,
    BoardProbe,
    HermesCLI,
    HermesError,
    HermesVersion,
    MaxSemantics,
    max_argument,
)
from .lock import BoardLocks
from .metrics import DispatcherMetrics
from .policy import BoardLoad, Decision, Watermarks, decide

log = logging.getLogger("llm_throttle.dispatch")


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    max_running: int
    marks: Watermarks
    interval_s: float = 10.0
    maintenance_interval_s: float = 60.0
    #: boards to manage; None: every board Hermes lists (new ones are picked up)
    boards: tuple[str, ...] | None = None
    dry_run: bool = False
    #: None: from the installed Hermes version at start
    semantics: MaxSemantics | None = None

    def __post_init__(self) -> None:
        if self.max_running < 1:
            raise ValueError("--max-running must be at least 1")
        if self.interval_s <= 0 or self.maintenance_interval_s <= 0:
            raise ValueError("intervals must be positive")


@dataclass(slots=True)
class BoardTick:
    running: int
    ready: int
    todo: int
    grant: int = 0
    #: the --max passed to (or, in a dry run, meant for) `dispatch`; None: not dispatched
    max_arg: int | None = None
    maintenance: bool = False
    spawned: tuple[str, ...] = ()
    reclaimed: int = 0
    promoted: int = 0
    error: str | None = None
    #: why the board was left alone, e.g. another companion holds its lock
    skipped: str | None = None


@dataclass(slots=True)
class TickReport:
    number: int
    at: float
    backlog: int | None = None
    holding: bool = False
    decision: str = ""
    free_slots: int = 0
    boards: dict[str, BoardTick] = field(default_factory=dict)
    error: str | None = None
    dry_run: bool = False
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and not any(b.error for b in self.boards.values())

    @property
    def spawned(self) -> int:
        return sum(len(b.spawned) for b in self.boards.values())

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ok"] = self.ok
        doc["spawned_total"] = self.spawned
        return doc

    def log_line(self) -> str:
        """The one line per tick: running per board, backlog, decision, spawned."""

        def per_board(pick: Callable[[BoardTick], object]) -> str:
            items = [f"{slug}:{pick(b)}" for slug, b in sorted(self.boards.items())]
            return ",".join(items) or "-"

        running = sum(b.running for b in self.boards.values())
        spawned = ",".join(
            f"{slug}:{len(b.spawned)}" for slug, b in sorted(self.boards.items()) if b.spawned
        ) or "0"
        passes = ",".join(
            f"{slug}:{b.max_arg}" for slug, b in sorted(self.boards.items())
            if b.max_arg is not None and not b.maintenance
        ) or "-"
        maintenance = ",".join(
            slug for slug, b in sorted(self.boards.items()) if b.maintenance
        ) or "-"
        backlog = "?" if self.backlog is None else str(self.backlog)
        parts = [
            f"tick={self.number}",
            f"backlog={backlog}",
            f"hold={'yes' if self.holding else 'no'}",
            f"running={per_board(lambda b: b.running)} total={running}",
            f"ready={per_board(lambda b: b.ready)}",
            f'decision="{self.decision}"',
            f"{'would_dispatch' if self.dry_run else 'dispatch'}_max={passes}",
            f"spawned={spawned}",
            f"maintenance={maintenance}",
            f"took={self.duration_s:.1f}s",
        ]
        problems = [self.error] if self.error else []
        problems += [f"{slug}: {b.error}" for slug, b in sorted(self.boards.items()) if b.error]
        problems += [f"{slug}: {b.skipped}" for slug, b in sorted(self.boards.items())
                     if b.skipped]
        if problems:
            parts.append('problems="' + "; ".join(problems).replace('"', "'") + '"')
        return " ".join(parts)


class Dispatcher:
    """Ticks every ``interval_s``; never starts a worker that would take the boards over cap."""

    def __init__(
        self,
        settings: DispatchSettings,
        *,
        hermes: HermesCLI,
        probe: BoardProbe,
        backlog: BacklogSource,
        locks: BoardLocks,
        metrics: DispatcherMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.hermes = hermes
        self.probe = probe
        self.backlog = backlog
        self.locks = locks
        self.metrics = metrics or DispatcherMetrics()
        self.clock = clock
        self.wall_clock = wall_clock
        self.holding = False
        self.semantics = settings.semantics
        self.version: HermesVersion | None = None
        self.warnings: list[str] = []
        self.last: TickReport | None = None
        self.recent: deque[TickReport] = deque(maxlen=30)
        self._ticks = 0
        self._last_pass: dict[str, float] = {}

    async def start(self) -> None:
        """Learn what ``--max`` means for the installed Hermes, unless told."""
        if self.semantics is not None:
            return
        try:
            self.version = await self.hermes.version()
        except HermesError as exc:
            self.semantics = MaxSemantics.SPAWNS
            self.add_warning(f"cannot tell the Hermes version ({exc}); passing --max as a "
                             "per-pass spawn cap, which never over-spawns but may under-fill")
            return
        self.semantics = self.version.max_semantics
        log.info("hermes %s: dispatch --max caps %s", self.version,
                 "running tasks" if self.semantics is MaxSemantics.RUNNING
                 else "spawns per pass")

    def add_warning(self, message: str) -> None:
        """Logged now and kept for ``/status``."""
        log.warning("%s", message)
        self.warnings.append(message)

    # -- one tick -------------------------------------------------------------------------------

    async def tick(self) -> TickReport:
        self._ticks += 1
        started = self.clock()
        report = TickReport(number=self._ticks, at=self.wall_clock(),
                            holding=self.holding, dry_run=self.settings.dry_run)
        try:
            await self._tick(report, started)
        finally:
            report.duration_s = self.clock() - started
            self.last = report
            self.recent.append(report)
            self.metrics.observe(report)
            (log.info if report.ok else log.warning)("%s", report.log_line())
        return report

    async def _tick(self, report: TickReport, now: float) -> None:
        backlog_error: str | None = None
        try:
            backlog = await self.backlog.read()
            report.backlog = backlog.queued
            if backlog.missing:
                log.debug("models not in the proxy status (nothing queued): %s",
                          ",".join(backlog.missing))
        except BacklogError as exc:
            backlog_error = f"backlog: {exc}"
            report.error = backlog_error
        try:
            counts = await self.probe.board_counts()
        except HermesError as exc:
            report.error = "; ".join(filter(None, [backlog_error, f"boards: {exc}"]))
            report.decision = "no board counts: skipped"
            self.metrics.hermes_failures.labels(command="boards").inc()
            return
        selected = self._select(counts, report)
        try:
            owned, taken = await self.locks.claim(selected)
        except Exception as exc:  # noqa: BLE001 - e.g. Redis down: dispatch nothing
            report.error = "; ".join(filter(None, [report.error, f"locks: {exc}"]))
            report.decision = "board locks unavailable: skipped"
            return
        for slug in selected:
            c = counts[slug]
            report.boards[slug] = BoardTick(running=c.running, ready=c.ready, todo=c.todo)
            if slug in taken:
                report.boards[slug].skipped = "another dispatcher holds its lock"
        loads = {
            slug: BoardLoad(running=counts[slug].running,
                            ready=counts[slug].ready if slug in owned else 0)
            for slug in selected
        }
        decision = self._decide(report, loads, owned)
        await self._dispatch(report, decision, counts, owned, now)

    def _select(self, counts: Mapping[str, BoardCounts], report: TickReport) -> list[str]:
        wanted = self.settings.boards
        if wanted is None:
            return sorted(counts)
        missing = [slug for slug in wanted if slug not in counts]
        if missing:
            note = "boards not found: " + ",".join(missing)
            report.error = f"{report.error}; {note}" if report.error else note
        return [slug for slug in wanted if slug in counts]

    def _decide(self, report: TickReport, loads: Mapping[str, BoardLoad],
                owned: set[str]) -> Decision:
        order = sorted(owned)
        if order:
            shift = self._ticks % len(order)
            order = order[shift:] + order[:shift]
        if report.backlog is None:
            decision = Decision(holding=self.holding,
                                reason="backlog unknown: not spawning")
        else:
            decision = decide(holding=self.holding, backlog=report.backlog,
                              marks=self.settings.marks, max_running=self.settings.max_running,
                              boards=loads, tiebreak=order)
            if decision.holding != self.holding:
                self.metrics.hold_transitions.labels(
                    to="hold" if decision.holding else "release").inc()
            self.holding = decision.holding
        report.holding = decision.holding
        report.decision = decision.reason
        report.free_slots = decision.free_slots
        return decision

    async def _dispatch(self, report: TickReport, decision: Decision,
                        counts: Mapping[str, BoardCounts], owned: set[str], now: float) -> None:
        assert self.semantics is not None, "start() first"
        for slug in sorted(owned):
            board, c = report.boards[slug], counts[slug]
            board.grant = decision.grants.get(slug, 0)
            due = now - self._last_pass.get(slug, -math.inf) >= self.settings.maintenance_interval_s
            if board.grant > 0:
                board.max_arg = max_argument(self.semantics, c.running, board.grant)
            elif due and c.unfinished > 0:
                board.max_arg = 0
                board.maintenance = True
            else:
                continue
            if self.settings.dry_run:
                self._last_pass[slug] = now  # as if it ran, so the printout stays realistic
                continue
            if not await self.locks.still_owned(slug):
                board.skipped, board.max_arg = "lock lost before dispatch", None
                continue
            try:
                outcome = await self.hermes.dispatch(slug, board.max_arg)
            except HermesError as exc:
                board.error = str(exc)
                self.metrics.hermes_failures.labels(command="dispatch").inc()
                continue
            self._last_pass[slug] = now
            board.spawned = outcome.spawned
            board.reclaimed = outcome.reclaimed + len(outcome.crashed)
            board.promoted = outcome.promoted

    # -- the long run ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; a tick that raises is logged and the loop goes on."""
        while not stop.is_set():
            started = self.clock()
            try:
                await self.tick()
            except Exception:  # a bug in one tick must not end the companion
                log.exception("dispatch tick failed")
            delay = max(self.settings.interval_s - (self.clock() - started), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    def status(self) -> dict[str, Any]:
        s = self.settings
        return {
            "holding": self.holding,
            "dry_run": s.dry_run,
            "settings": {
                "max_running": s.max_running,
                "high_watermark": s.marks.high,
                "low_watermark": s.marks.low,
                "interval_s": s.interval_s,
                "maintenance_interval_s": s.maintenance_interval_s,
                "boards": list(s.boards) if s.boards is not None else "all",
            },
            "hermes": {
                "executable": self.hermes.executable,
                "version": str(self.version) if self.version else None,
                "max_semantics": self.semantics.value if self.semantics else None,
            },
            "locks": self.locks.describe(),
            "warnings": list(self.warnings),
            "ticks": self._ticks,
            "last_tick": self.last.to_dict() if self.last else None,
            "recent": [
                {"tick": r.number, "at": r.at, "backlog": r.backlog, "holding": r.holding,
                 "spawned": r.spawned, "ok": r.ok,
                 "running": sum(b.running for b in r.boards.values())}
                for r in self.recent
            ],
        }
