"""The companion's tick: observe, decide, dispatch, report.

One tick, in order:

1. read the backlog and the capacity from the proxy; if that fails, or a watched model matches
   no route of the proxy, nothing is spawned this tick (a missing number must not read as
   "the GPUs are idle"), but maintenance still runs;
2. count tasks per board (``hermes kanban boards list --json`` or the read-only SQLite probe);
   if that fails the tick ends there and the next one retries;
3. renew or take the per-board locks; boards another companion holds still count against
   ``--max-running`` but are never dispatched by us;
4. :func:`policy.decide`: hold or not (hysteresis), whether the GPUs want more work (free
   slots, queue below the low watermark), the target (cap x learned tasks per slot, under
   ``--max-running``), a slow-start ramp after an outage or a long hold, and the fair grants;
5. one ``hermes kanban --board B dispatch --max N --json`` per board with a grant. A board not
   passed over for ``maintenance_interval_s`` gets ``--max 0`` (reclaims crashed workers,
   promotes finished parents' children, starts nothing) -- whether holding or not, since a
   crashed worker still counts as running until reclaimed;
6. one log line, metrics, and the report kept for ``/status``.

A failing ``hermes`` call fails that board's step only; it is logged and retried next tick.
The pieces live in their own modules: the settings (:mod:`.settings`), the decision
(:mod:`.policy`), the slow start (:mod:`.ramp`), the look ahead (:mod:`.forecast`), the
dispatch calls (:mod:`.passes`), the boards' loads and order (:mod:`.boards`), the ``/status``
document (:mod:`.status_view`); this module runs them in order, and decides when.

Between ticks a watcher reads the proxy every ``react_s``, or at each change the proxy pushes
(:mod:`.pushed`), and the boards too when the probe is the cheap read-only SQLite one, and
runs the same pure decision on what it saw: when that would spawn (a slot freed, a task
finished, the ramp grew), it starts a tick at once. ``interval_s`` is only the cadence of the
full maintenance tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from .backlog import Backlog, BacklogError, BacklogSource, ChangeSignal, ProxyUnreachable
from .boards import board_loads, board_ticks, locked_out, rotation, select_boards
from .forecast import BacklogTrend, LastingOutside, LeadTime
from .hermes import HermesCLI
from .hermes_model import BoardCounts, BoardProbe, HermesError, HermesVersion, MaxSemantics
from .lock import BoardLocks
from .metrics import DispatcherMetrics
from .passes import BoardPasses
from .policy import (
    Decision,
    HoldReason,
    blocked,
    decide,
)
from .ramp import Ramp
from .ratio import TasksPerSlot
from .report import TickReport
from .settings import DispatchSettings
from .signals import (
    FinishingTracker,
    finishing_tasks,
    open_requests,
    outside_requests,
    pending_workers,
    starting_workers,
)
from .status_view import status_document
from .waits import first_done

log = logging.getLogger("llm_throttle.dispatch")

#: the tasks-per-slot estimate takes one reading per this many seconds (the poll's cadence)
RATIO_SAMPLE_S = 0.5


class Dispatcher:
    """Ticks every ``interval_s``, and at once when a cheap read says a worker would start;
    never starts a worker the policy did not grant (see :mod:`.policy`)."""

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
        #: the backlog hysteresis (held at the high watermark until below the low one)
        self.holding = False
        #: why spawning is held now, whatever the cause; None: not holding
        self.hold_reason: HoldReason | None = None
        self.semantics = settings.semantics
        self.version: HermesVersion | None = None
        self.warnings: list[str] = []
        self.last: TickReport | None = None
        self.recent: deque[TickReport] = deque(maxlen=30)
        self.ratio = TasksPerSlot(settings.ratio)
        #: a worker's start-up, learned from spawned tasks' first requests
        self.lead = LeadTime(settings.lead_time_s)
        #: the queue's recent drain, to end a hold one start-up before the queue is empty
        self.trend = BacklogTrend()
        #: the slots outside traffic holds for good (a burst does not lower the target)
        self.outside = LastingOutside()
        #: which finished tasks' workers already made their final call
        self.finishing = FinishingTracker()
        #: proxy reads that failed in a row (ticks and watcher alike)
        self.failed_reads = 0
        #: ticks run since start
        self.ticks = 0
        #: the tick's dispatch calls (and when each board last had one)
        self.passes = BoardPasses(hermes, locks, self.metrics,
                                  maintenance_interval_s=settings.maintenance_interval_s,
                                  dry_run=settings.dry_run)
        #: the slow start after an outage or a long hold
        self.ramp = Ramp(settings.ramp_after_s)
        self._owned: set[str] = set()
        self._last_counts: dict[str, BoardCounts] = {}
        self._last_seen: Backlog | None = None
        self._wake = asyncio.Event()
        #: some worker has had a request open: readings now say something about the ratio
        self._reached_gpu = False
        self._ratio_sampled_at = -math.inf
        self._ticking = False

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

    @property
    def healthy(self) -> bool:
        return self.failed_reads < self.settings.unhealthy_after

    # -- reading the proxy ------------------------------------------------------------------

    async def read_backlog(self) -> Backlog:
        """One read of the proxy, counted for /healthz and fed to the ratio estimate."""
        try:
            backlog = await self.backlog.read()
        except BacklogError:
            self.failed_reads += 1
            self.metrics.read_failures.inc()
            raise
        self.failed_reads = 0
        now = self.clock()
        loads = board_loads(self.settings.boards, self._last_counts, ())
        running = sum(b.running for b in loads.values())
        finishing = finishing_tasks(self._last_counts, loads)
        self._reached_gpu |= open_requests(backlog) > 0
        # Before any worker's first request every running task is starting at once: a ratio
        # read then says "infinitely many tasks per slot" (clamped to the bound). And at most
        # one sample per RATIO_SAMPLE_S: pushed reads come at every change, and samples bunched
        # around busy moments would weigh them over quiet ones. The ratio is of the running
        # tasks' own requests: a finished task's final call is not one (counting it read as
        # fewer tasks per slot, and the target held the last ready tasks back at the end).
        if self._reached_gpu and now - self._ratio_sampled_at >= RATIO_SAMPLE_S:
            self._ratio_sampled_at = now
            final_calls = len(finishing & backlog.attributed_values)
            self.ratio.observe(now, running, max(open_requests(backlog) - final_calls, 0))
        self.trend.observe(now, backlog.queued)
        self.outside.observe(now, outside_requests(backlog))
        self.lead.observe(now, backlog.attributed_values)
        self.finishing.saw_asking(finishing, backlog.attributed_values)
        return backlog

    # -- one tick ---------------------------------------------------------------------------

    async def tick(self, trigger: str = "interval") -> TickReport:
        self._ticking = True
        self.ticks += 1
        started = self.clock()
        report = TickReport(number=self.ticks, at=self.wall_clock(), holding=self.holding,
                            dry_run=self.settings.dry_run, trigger=trigger)
        try:
            await self._tick(report, started)
        finally:
            report.duration_s = self.clock() - started
            self._ticking = False
            self.last = report
            self.recent.append(report)
            self.metrics.observe(report, self.failed_reads)
            (log.info if report.ok else log.warning)("%s", report.log_line())
        return report

    async def _tick(self, report: TickReport, now: float) -> None:
        block: Decision | None = None
        backlog: Backlog | None = None
        try:
            backlog = await self.read_backlog()
        except ProxyUnreachable as exc:
            report.error = f"backlog: {exc}"
            block = blocked(HoldReason.PROXY_UNREACHABLE,
                            f"proxy unreachable: not spawning ({exc})")
        except BacklogError as exc:
            report.error = f"backlog: {exc}"
            block = blocked(HoldReason.BACKLOG_UNKNOWN, f"backlog unknown: not spawning ({exc})")
        if backlog is not None:
            self._last_seen = backlog
            report.backlog, report.cap, report.in_flight = \
                backlog.queued, backlog.cap, backlog.in_flight
            if backlog.missing:
                known = ", ".join(sorted(set(backlog.routes.values()))) or "none"
                note = (f"--models {','.join(backlog.missing)} matches no model the proxy "
                        f"serves (routes matched: {known}); their backlog is unknown")
                log.warning("%s", note)
                report.error = note
                block = blocked(HoldReason.BACKLOG_UNKNOWN,
                                "backlog unknown: " + ",".join(backlog.missing) +
                                " not served by the proxy")
        try:
            counts = await self.probe.board_counts()
        except HermesError as exc:
            report.error = "; ".join(filter(None, [report.error, f"boards: {exc}"]))
            report.decision = "no board counts: skipped"
            self.metrics.hermes_failures.labels(command="boards").inc()
            return
        self._last_counts = dict(counts)
        selected = self._select(counts, report)
        try:
            owned, taken = await self.locks.claim(selected)
        except Exception as exc:  # noqa: BLE001 - e.g. Redis down: dispatch nothing
            report.error = "; ".join(filter(None, [report.error, f"locks: {exc}"]))
            report.decision = "board locks unavailable: skipped"
            return
        self._owned = set(owned)
        report.boards.update(board_ticks(selected, counts, taken, self.wall_clock()))
        if block is None:
            block = locked_out(counts, owned, taken)
        decision = self._decide(report, counts, owned, block, backlog, now)
        await self._dispatch(report, decision, counts, owned, now)
        self.ramp.spawned(report.spawned)

    def _select(self, counts: Mapping[str, BoardCounts], report: TickReport) -> list[str]:
        selected, missing = select_boards(self.settings.boards, counts)
        if missing:
            note = "boards not found: " + ",".join(missing)
            report.error = f"{report.error}; {note}" if report.error else note
        return selected

    def _policy(self, backlog: Backlog, counts: Mapping[str, BoardCounts], owned: set[str],
                now: float) -> Decision:
        loads = board_loads(self.settings.boards, counts, owned)
        finishing = self.finishing.observe(finishing_tasks(counts, loads),
                                           backlog.attributed_values)
        pending = pending_workers(backlog, loads, finishing)
        return decide(
            holding=self.holding, backlog=backlog.queued, marks=self.settings.marks,
            boards=loads, max_running=self.settings.max_running,
            cap=backlog.cap, outside=self.outside.value(outside_requests(backlog)),
            in_flight=backlog.in_flight,
            pending=pending, pending_known=backlog.attributed_open is not None,
            tasks_per_slot=self.ratio.value(now),
            allowance=self.ramp.allowance(now), tiebreak=rotation(owned, self.ticks),
            forecast=self.trend.forecast(backlog.queued, self.lead.value()),
            starting=starting_workers(backlog, self.lead.starting,
                                      sum(load.running for load in loads.values())
                                      + finishing.asking))

    def _decide(self, report: TickReport, counts: Mapping[str, BoardCounts], owned: set[str],
                block: Decision | None, backlog: Backlog | None, now: float) -> Decision:
        if block is not None or backlog is None:
            decision = block or blocked(HoldReason.BACKLOG_UNKNOWN, "backlog unknown")
        else:
            decision = self._policy(backlog, counts, owned, now)
            if decision.holding != self.holding:
                self.metrics.hold_transitions.labels(
                    to="hold" if decision.holding else "release").inc()
            self.holding = decision.holding
        self.ramp.observe(decision, now)
        self.hold_reason = decision.hold_reason
        report.decided(decision, self.ratio.value(now), self.ramp.allowance(now))
        return decision

    async def _dispatch(self, report: TickReport, decision: Decision,
                        counts: Mapping[str, BoardCounts], owned: set[str], now: float) -> None:
        assert self.semantics is not None, "start() first"
        spawned = await self.passes.run(report, decision, counts, owned, now, self.semantics,
                                        self._backlog_reached_high)
        self.lead.spawned(now, spawned)

    async def _backlog_reached_high(self) -> bool:
        """A fresh look right before a spawning call; an unreadable proxy counts as high."""
        try:
            backlog = await self.read_backlog()
        except BacklogError:
            return True
        self._last_seen = backlog
        return backlog.queued >= self.settings.marks.high

    # -- between ticks ----------------------------------------------------------------------

    async def watch_once(self) -> bool:
        """One cheap look: would a tick now start a worker? (Sets the wake-up if so.)"""
        if self._ticking:
            return False  # the tick in progress reads and decides for itself
        before = self._last_seen
        try:
            backlog = await self.read_backlog()
        except BacklogError:
            return False
        self._last_seen = backlog
        if backlog.missing or self.hold_reason in (HoldReason.LOCKED_OUT,):
            return False
        counts = self._last_counts
        if getattr(self.probe, "cheap", False):
            try:
                counts = await self.probe.board_counts()
            except HermesError:
                return False
            self._last_counts = dict(counts)
        elif before is not None and not self.holding and (
                backlog.in_flight < before.in_flight
                or open_requests(backlog) < open_requests(before)):
            # A request of a worker ended: its task may have finished. The counts we have are
            # from the last tick, so let the tick count again.
            self._wake.set()
            return True
        if not counts:
            return False
        decision = self._policy(backlog, counts, self._owned, self.clock())
        if decision.grants or decision.holding != self.holding:
            self._wake.set()
            return True
        return False

    async def _watch(self, stop: asyncio.Event) -> None:
        """Look every ``react_s``, or at once when the proxy pushes a change."""
        signal = self.backlog if isinstance(self.backlog, ChangeSignal) else None
        while not stop.is_set():
            try:
                await self.watch_once()
            except Exception:  # a bug in the watcher must not end the companion
                log.exception("dispatch watcher failed")
            if signal is not None:
                await first_done({"stop": stop.wait(),
                                  "changed": signal.wait_changed(self.settings.react_s)})
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.react_s)

    # -- the long run -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set: every ``interval_s``, or when the watcher wakes us.
        A tick that raises is logged and the loop goes on."""
        watcher = None
        if self.settings.react_s > 0:
            watcher = asyncio.create_task(self._watch(stop))
        trigger = "interval"
        try:
            while not stop.is_set():
                started = self.clock()
                self._wake.clear()
                try:
                    await self.tick(trigger)
                except Exception:  # a bug in one tick must not end the companion
                    log.exception("dispatch tick failed")
                delay = max(self.settings.interval_s - (self.clock() - started), 0.0)
                trigger = await self._sleep(stop, delay)
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    async def _sleep(self, stop: asyncio.Event, delay: float) -> str:
        """Wait for the next tick; returns what ends the wait."""
        return await first_done({"stop": stop.wait(), "watch": self._wake.wait()},
                                timeout=delay, default="interval")

    def status(self) -> dict[str, Any]:
        """The ``/status`` document (see :mod:`.status_view`)."""
        return status_document(self)
