"""The companion's ``GET /status`` document: its state, settings, estimates and recent ticks."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .backlog import BacklogSource
from .forecast import LeadTime
from .hermes import HermesCLI
from .hermes_model import HermesVersion, MaxSemantics
from .lock import BoardLocks
from .policy import HoldReason
from .pushed import PushedBacklog
from .ramp import Ramp
from .ratio import TasksPerSlot
from .report import TickReport
from .settings import DispatchSettings


class DispatcherState(Protocol):
    """What the document reads of a running companion (a :class:`.loop.Dispatcher`); a
    protocol, so that this view need not import the loop that serves it."""

    settings: DispatchSettings
    clock: Callable[[], float]
    backlog: BacklogSource
    hermes: HermesCLI
    locks: BoardLocks
    hold_reason: HoldReason | None
    failed_reads: int
    ratio: TasksPerSlot
    ramp: Ramp
    lead: LeadTime
    version: HermesVersion | None
    semantics: MaxSemantics | None
    warnings: list[str]
    ticks: int
    last: TickReport | None
    recent: deque[TickReport]

    @property
    def healthy(self) -> bool: ...


def _events(d: DispatcherState) -> dict[str, Any] | None:
    source = d.backlog
    if not isinstance(source, PushedBacklog):
        return None
    return {"url": source.url, "connected": source.connected, "received": source.events,
            "down_reason": source.down_reason}

def status_document(d: DispatcherState) -> dict[str, Any]:
    """What the companion is doing and why, from its public state."""
    s = d.settings
    now = d.clock()
    return {
        "holding": d.hold_reason is not None,
        "hold_reason": d.hold_reason.value if d.hold_reason else None,
        "healthy": d.healthy,
        "failed_reads": d.failed_reads,
        "dry_run": s.dry_run,
        "settings": {
            "max_running": s.max_running,
            "high_watermark": s.marks.high,
            "low_watermark": s.marks.low,
            "interval_s": s.interval_s,
            "react_s": s.react_s,
            "maintenance_interval_s": s.maintenance_interval_s,
            "unhealthy_after": s.unhealthy_after,
            "ramp_after_s": s.ramp_after_s,
            "boards": list(s.boards) if s.boards is not None else "all",
        },
        "tasks_per_slot": {"value": round(d.ratio.value(now), 3),
                           "learned": d.ratio.learned,
                           "prior": s.ratio.prior},
        "ramping": d.ramp.active,
        "lead_time_s": {"value": round(d.lead.value(), 2), "learned": d.lead.learned,
                        "prior": s.lead_time_s},
        "hermes": {
            "executable": d.hermes.executable,
            "version": str(d.version) if d.version else None,
            "max_semantics": d.semantics.value if d.semantics else None,
        },
        "events": _events(d),
        "locks": d.locks.describe(),
        "warnings": list(d.warnings),
        "ticks": d.ticks,
        "last_tick": d.last.to_dict() if d.last else None,
        "recent": [
            {"tick": r.number, "at": r.at, "backlog": r.backlog, "holding": r.holding,
             "hold_reason": r.hold_reason, "spawned": r.spawned, "ok": r.ok,
             "running": sum(b.running for b in r.boards.values())}
            for r in d.recent
        ],
    }
