"""One tick's ``hermes kanban dispatch`` calls, one per board that needs one.

A board with a grant gets ``dispatch --max N`` (N from :func:`.hermes.max_argument`: the grant
on top of its running tasks); a board with unfinished tasks not passed over for
``maintenance_interval_s`` gets ``--max 0`` (Hermes reclaims crashed workers and promotes
children, and starts nothing), holding or not. Right before the calls: the board's lock must
still be ours, and one fresh look at the queue skips every spawning call if the high mark was
reached since the decision. Then the calls run at once (one takes seconds). A failing call
fails that board's pass only; the next tick retries.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping

from .hermes import HermesCLI
from .hermes_model import BoardCounts, HermesError, MaxSemantics, max_argument
from .lock import BoardLocks
from .metrics import DispatcherMetrics
from .policy import Decision
from .report import BoardTick, TickReport


class BoardPasses:
    """Runs the passes of a decision; remembers when each board last had one."""

    def __init__(self, hermes: HermesCLI, locks: BoardLocks, metrics: DispatcherMetrics, *,
                 maintenance_interval_s: float, dry_run: bool) -> None:
        self.hermes = hermes
        self.locks = locks
        self.metrics = metrics
        self.maintenance_interval_s = maintenance_interval_s
        self.dry_run = dry_run
        #: board -> when its last pass ran (maintenance is due ``maintenance_interval_s`` on)
        self.last_pass: dict[str, float] = {}

    async def run(self, report: TickReport, decision: Decision,
                  counts: Mapping[str, BoardCounts], owned: set[str], now: float,
                  semantics: MaxSemantics, reached_high: Callable[[], Awaitable[bool]]
                  ) -> list[str]:
        """Every owned board's pass for this decision, recorded in ``report``; returns the
        task ids the passes spawned. ``reached_high`` is the fresh look at the queue taken
        right before spawning calls (True: skip them)."""
        planned: list[str] = []
        for slug in sorted(owned):
            board, c = report.boards[slug], counts[slug]
            board.grant = decision.grants.get(slug, 0)
            due = now - self.last_pass.get(slug, -math.inf) >= self.maintenance_interval_s
            if board.grant > 0:
                board.max_arg = max_argument(semantics, c.running, board.grant)
            elif due and c.unfinished > 0:
                board.max_arg = 0
                board.maintenance = True
            else:
                continue
            if self.dry_run:
                self.last_pass[slug] = now  # as if it ran, so the printout stays realistic
                continue
            if not await self.locks.still_owned(slug):
                board.skipped, board.max_arg = "lock lost before dispatch", None
                continue
            planned.append(slug)
        spawning = [slug for slug in planned if report.boards[slug].grant > 0]
        if spawning and await reached_high():
            # a dispatch call takes seconds: a burst may have arrived since we decided
            for slug in spawning:
                board = report.boards[slug]
                board.skipped, board.max_arg, board.grant = \
                    "backlog reached the high mark before dispatch", None, 0
            planned = [slug for slug in planned if slug not in spawning]
        spawned = await asyncio.gather(*(self._pass(slug, report.boards[slug], now)
                                         for slug in planned))
        return [task for tasks in spawned for task in tasks]

    async def _pass(self, slug: str, board: BoardTick, now: float) -> tuple[str, ...]:
        """One board's ``dispatch --max N``; a failure is that board's alone."""
        assert board.max_arg is not None
        try:
            outcome = await self.hermes.dispatch(slug, board.max_arg)
        except HermesError as exc:
            board.error = str(exc)
            self.metrics.hermes_failures.labels(command="dispatch").inc()
            return ()
        self.last_pass[slug] = now
        board.spawned = outcome.spawned
        board.reclaimed = outcome.reclaimed + len(outcome.crashed)
        board.promoted = outcome.promoted
        board.failures = {k: v for k, v in outcome.failures.items() if v}
        return outcome.spawned
