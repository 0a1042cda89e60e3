"""What one tick saw and did: per board and in total, for the log line, ``/status`` and
``/metrics``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .policy import Decision


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
    #: worker failures Hermes reported in this pass: crashed, timed_out, auto_blocked
    failures: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    #: why the board was left alone, e.g. another companion holds its lock
    skipped: str | None = None
    #: every status Hermes reports, with its count (for /metrics)
    by_status: dict[str, int] = field(default_factory=dict)
    #: seconds the oldest ready task has waited; None: the probe does not know
    oldest_ready_s: float | None = None


@dataclass(slots=True)
class TickReport:
    number: int
    at: float
    backlog: int | None = None
    holding: bool = False
    #: why it holds (``backlog_high``, ``backlog_unknown``, ``proxy_unreachable``, ...)
    hold_reason: str | None = None
    decision: str = ""
    free_slots: int = 0
    #: what the tick aimed at: running tasks, cap and in flight of the routes, the ratio
    target: int | None = None
    cap: int | None = None
    in_flight: int | None = None
    tasks_per_slot: float | None = None
    ramp_allowance: int | None = None
    #: what started the tick: ``interval`` or ``watch``
    trigger: str = "interval"
    boards: dict[str, BoardTick] = field(default_factory=dict)
    error: str | None = None
    dry_run: bool = False
    duration_s: float = 0.0

    def decided(self, decision: Decision, tasks_per_slot: float, ramp_allowance: int | None,
                ) -> None:
        """Records the tick's decision, with the estimates it was taken on."""
        self.holding = decision.holding
        self.hold_reason = decision.hold_reason.value if decision.hold_reason else None
        self.decision = decision.reason
        self.free_slots = decision.free_slots
        self.target = decision.target
        self.tasks_per_slot = tasks_per_slot
        self.ramp_allowance = ramp_allowance

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
        hold = f"yes({self.hold_reason})" if self.holding else "no"
        gpu = "-" if self.in_flight is None else \
            f"{self.in_flight}/{'-' if self.cap is None else self.cap}"
        ratio = "-" if self.tasks_per_slot is None else f"{self.tasks_per_slot:.2f}"
        parts = [
            f"tick={self.number}",
            f"by={self.trigger}",
            f"backlog={backlog}",
            f"hold={hold}",
            f"gpu={gpu}",
            f"running={per_board(lambda b: b.running)} total={running}",
            f"target={'-' if self.target is None else self.target}",
            f"tasks_per_slot={ratio}",
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
