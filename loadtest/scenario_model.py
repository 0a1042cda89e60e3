"""What a benchmark scenario is, and what running it recorded: plain data, no I/O.

The scenario file reader (``loadtest/scenario_file.py``) builds a ``Scenario``; the runner
(``loadtest/scenario.py``) turns it into one ``RunRecord`` per phase x target x repeat, gathered
in a ``ScenarioResult``; the analysis (``loadtest/verdicts.py``, ``run_stats.py``,
``report_section.py``) reads those. Keeping the types here lets all of them import them
without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

#: targets that are not proxies: the mock itself, nginx, the minimal aiohttp proxy
DIRECT, NGINX, PASSTHROUGH = "direct", "nginx", "passthrough"
#: the kinds of analysis a scenario may ask for (``analysis:``, ``loadtest/verdicts.py``)
ANALYSES = ("overhead", "streaming", "overload", "priority", "multihost", "fairness")
#: what --smoke does to every load before the phase's own ``smoke`` overrides
SMOKE_DURATION_S = 1.5
SMOKE_REQUESTS = 60


@dataclass(frozen=True)
class ProxySpec:
    name: str
    config: dict[str, Any]
    replicas: int = 1


@dataclass(frozen=True)
class Phase:
    name: str
    targets: tuple[str, ...]
    #: load name -> LoadSpec fields; one load is called "main"
    loads: dict[str, dict[str, Any]]
    mock: dict[str, Any] = field(default_factory=dict)
    smoke: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    description: str
    analysis: str
    path: Path
    mock: dict[str, Any]
    phases: tuple[Phase, ...]
    proxies: dict[str, ProxySpec] = field(default_factory=dict)
    nginx: bool = False
    redis: bool = False
    repeat: int = 1
    passthrough: bool = False
    targets: dict[str, float] = field(default_factory=dict)
    smoke_mock: dict[str, Any] = field(default_factory=dict)

    def smoked(self) -> Scenario:
        """The same scenario shrunk to a couple of seconds per phase (for tests)."""
        phases = tuple(
            Phase(p.name, p.targets, {n: _smoke_load(load, p.smoke) for n, load in p.loads.items()},
                  p.mock, p.smoke, p.description)
            for p in self.phases
        )
        return Scenario(self.name, self.title, self.description, self.analysis, self.path,
                        {**self.mock, **self.smoke_mock}, phases, self.proxies, self.nginx,
                        self.redis, 1, self.targets, self.smoke_mock, self.passthrough)


def _smoke_load(load: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(load)
    if out.get("duration") is not None:
        out["duration"] = min(float(out["duration"]), SMOKE_DURATION_S)
    if out.get("requests") is not None:
        out["requests"] = min(int(out["requests"]), SMOKE_REQUESTS)
    out.update(overrides)
    return out


@dataclass
class RunRecord:
    """One phase x target x repeat: its loads' summaries and what the servers did."""

    phase: str
    target: str
    repeat: int
    #: service names whose CPU is the target's cost (nginx; the proxy replicas)
    servers: list[str]
    #: load name -> generator summary
    loads: dict[str, dict[str, Any]]
    #: load name -> result JSON file
    files: dict[str, str]
    #: service name (and "generator") -> CPU seconds during the run
    cpu_s: dict[str, float]
    wall_s: float
    #: the mock's /mock/stats after the run (peak, service_s, completed...)
    mock: dict[str, Any]
    #: the target proxies' queue depth and in flight once the run was over
    proxy_end: dict[str, float] | None = None
    #: CPU seconds used during the run by processes outside the scenario (other work on
    #: the machine; high values mean the run competed for the cores)
    foreign_cpu_s: float | None = None

    @property
    def requests(self) -> int:
        return sum(int(s["count"]) for s in self.loads.values())

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


@dataclass
class ScenarioResult:
    scenario: Scenario
    runs: list[RunRecord]
    out_dir: Path
    smoke: bool
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    #: the commit the measured code came from (see ``loadtest/provenance.py``)
    code: str | None = None
    #: the command line that ran it, and when it started (UTC)
    command: str = ""
    when: str = ""
