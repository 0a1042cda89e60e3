"""The companion's own ``/metrics`` series, in a private registry (never the process-global
one) so that two companions in one process, or one beside the proxy, do not mix; served by
:mod:`.endpoints`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .hermes_model import REPORTED, WORKER_FAILURES
from .policy import HoldReason

if TYPE_CHECKING:
    from .report import TickReport


class DispatcherMetrics:
    """All series of one companion, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = "llm_throttle_dispatch_"
        self.ticks = Counter(p + "ticks", "Dispatcher ticks by outcome.", ["outcome"], registry=r)
        self.tick_seconds = Histogram(p + "tick_seconds", "Duration of one tick.", registry=r,
                                      buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120))
        self.last_tick = Gauge(p + "last_tick_timestamp_seconds",
                               "Unix time of the last tick.", registry=r)
        self.holding = Gauge(p + "holding", "1 while spawning is held, by reason "
                             "(backlog_high, backlog_unknown, proxy_unreachable, locked_out).",
                             ["reason"], registry=r)
        self.hold_transitions = Counter(p + "hold_transitions", "Hold state changes.", ["to"],
                                        registry=r)
        self.backlog = Gauge(p + "backlog", "Requests queued at the proxy for the watched "
                             "models (NaN when unknown).", registry=r)
        self.free_slots = Gauge(p + "free_slots", "Slots under --max-running at the last tick.",
                                registry=r)
        self.running = Gauge(p + "running_tasks", "Running tasks per board.", ["board"],
                             registry=r)
        self.ready = Gauge(p + "ready_tasks", "Ready tasks per board.", ["board"], registry=r)
        self.spawned = Counter(p + "spawned", "Workers started per board.", ["board"],
                               registry=r)
        self.passes = Counter(p + "passes", "`hermes kanban dispatch` calls per board and kind.",
                              ["board", "kind"], registry=r)
        self.hermes_failures = Counter(p + "hermes_failures",
                                       "Failed `hermes` calls (bad output, stderr, timeout).",
                                       ["command"], registry=r)
        self.read_failures = Counter(p + "proxy_read_failures",
                                     "Failed reads of the proxy's status (or the store).",
                                     registry=r)
        self.failed_reads = Gauge(p + "proxy_failed_reads", "Failed proxy reads in a row; "
                                  "/healthz answers 503 from --unhealthy-after on.", registry=r)
        self.target = Gauge(p + "target_running", "Running tasks aimed at: cap x tasks per "
                            "slot, under --max-running (NaN when there is none).", registry=r)
        self.tasks_per_slot = Gauge(p + "tasks_per_slot", "Learned running tasks per open "
                                    "request of those tasks.", registry=r)
        self.capacity = Gauge(p + "capacity", "The watched routes' cap and in flight "
                              "(NaN when unknown).", ["kind"], registry=r)
        self.tasks = Gauge(p + "tasks", "Tasks per board and status.", ["board", "status"],
                           registry=r)
        self.oldest_ready = Gauge(p + "oldest_ready_age_seconds", "How long the oldest ready "
                                  "task of a board has waited (NaN: the probe cannot tell; 0: "
                                  "nothing ready).", ["board"], registry=r)
        self.reclaimed = Counter(p + "reclaimed", "Tasks Hermes reclaimed from dead or stale "
                                 "workers in our passes.", ["board"], registry=r)
        self.worker_failures = Counter(p + "worker_failures", "Worker failures our passes "
                                       "found, by kind.", ["board", "kind"], registry=r)
        for reason in HoldReason:
            self.holding.labels(reason=reason.value).set(0)

    def observe(self, report: TickReport, failed_reads: int | None = None) -> None:
        """One tick's report; ``failed_reads``: the proxy reads failed in a row so far."""
        nan = float("nan")
        self.ticks.labels(outcome="ok" if report.ok else "failed").inc()
        self.tick_seconds.observe(report.duration_s)
        self.last_tick.set(report.at)
        for reason in HoldReason:
            self.holding.labels(reason=reason.value).set(
                1 if report.holding and report.hold_reason == reason.value else 0)
        self.backlog.set(nan if report.backlog is None else report.backlog)
        self.free_slots.set(report.free_slots)
        self.target.set(nan if report.target is None else report.target)
        if report.tasks_per_slot is not None:
            self.tasks_per_slot.set(report.tasks_per_slot)
        self.capacity.labels(kind="cap").set(nan if report.cap is None else report.cap)
        self.capacity.labels(kind="in_flight").set(
            nan if report.in_flight is None else report.in_flight)
        if failed_reads is not None:
            self.failed_reads.set(failed_reads)
        for slug, board in report.boards.items():
            self.running.labels(board=slug).set(board.running)
            self.ready.labels(board=slug).set(board.ready)
            for status in dict.fromkeys((*REPORTED, *board.by_status)):
                self.tasks.labels(board=slug, status=status).set(board.by_status.get(status, 0))
            self.oldest_ready.labels(board=slug).set(
                nan if board.oldest_ready_s is None else board.oldest_ready_s)
            if board.spawned:
                self.spawned.labels(board=slug).inc(len(board.spawned))
            if board.reclaimed:
                self.reclaimed.labels(board=slug).inc(board.reclaimed)
            for kind in WORKER_FAILURES:
                if board.failures.get(kind):
                    self.worker_failures.labels(board=slug, kind=kind).inc(board.failures[kind])
            if board.max_arg is not None and not report.dry_run and board.error is None \
                    and board.skipped is None:
                kind = "maintenance" if board.maintenance else "spawn"
                self.passes.labels(board=slug, kind=kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
