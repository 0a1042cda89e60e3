"""What one companion is told: watermarks, ceilings, cadences, and the priors of what it
learns (the flags of ``llm-throttle dispatch``, checked once)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .hermes_model import MaxSemantics
from .policy import Watermarks
from .ratio import RatioSettings


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    marks: Watermarks
    #: optional ceiling on running tasks summed over the selected boards
    max_running: int | None = None
    interval_s: float = 10.0
    maintenance_interval_s: float = 60.0
    #: boards to manage; None: every board Hermes lists (new ones are picked up)
    boards: tuple[str, ...] | None = None
    dry_run: bool = False
    #: None: from the installed Hermes version at start
    semantics: MaxSemantics | None = None
    #: seconds between the watcher's cheap reads; 0: no watcher, ticks only
    react_s: float = 0.5
    #: failed proxy reads in a row after which /healthz answers 503
    unhealthy_after: int = 3
    #: a hold at least this long (or any outage) ends in a slow-start ramp
    ramp_after_s: float = 30.0
    ratio: RatioSettings = field(default_factory=RatioSettings)
    #: seconds from a spawn to the worker's first request, assumed until it is learned
    lead_time_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_running is not None and self.max_running < 1:
            raise ValueError("--max-running must be at least 1")
        if self.interval_s <= 0 or self.maintenance_interval_s <= 0:
            raise ValueError("intervals must be positive")
        if self.react_s < 0 or self.ramp_after_s < 0 or self.unhealthy_after < 1:
            raise ValueError("--react-interval and --ramp-after must not be negative, "
                             "--unhealthy-after at least 1")
