"""What a soak is asked to do (:class:`SoakSpec`) and what it found (:class:`SoakResult`, saved
as ``soak.json`` and read back by ``--from-json``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class SoakSpec:
    minutes: float = 30.0
    out: Path = Path("results/soak")
    #: open-loop arrivals per second (Poisson)
    rate: float = 25.0
    #: ``memory``, ``redis`` (start a redis-server) or a ``redis://`` URL
    store: str = "memory"
    sample_interval_s: float = 5.0
    max_in_flight: int = 8
    upstream_read_timeout_s: float = 2.0
    #: clients still unfinished this long after the load stops are abandoned (and counted)
    client_timeout_s: float = 30.0
    #: most requests open at once on the client side; arrivals past it are skipped and counted
    max_open: int = 400
    drain_timeout_s: float = 10.0
    seed: int = 1


@dataclass
class SoakResult:
    spec: dict[str, Any]
    machine: dict[str, Any]
    started_at: float
    elapsed_s: float = 0.0
    requests: int = 0
    skipped_arrivals: int = 0
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    by_cause: dict[str, int] = field(default_factory=dict)
    unexpected: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    #: permits still held after the drain, by resource (``queue`` is the global depth)
    outstanding: dict[str, float] = field(default_factory=dict)
    upstream_in_flight_after: int | None = None
    #: tracebacks in the proxy's log, by logger message and exception line
    proxy_log_errors: dict[str, int] = field(default_factory=dict)
    proxy_exit_code: int | None = None

    @property
    def permits_outstanding(self) -> float:
        return sum(self.outstanding.values())

    def rss_mib(self) -> dict[str, float | None]:
        values = [s["rss_kib"] / 1024 for s in self.samples if s.get("rss_kib")]
        if not values:
            return {"start": None, "end": None, "max": None}
        return {"start": round(values[0], 1), "end": round(values[-1], 1),
                "max": round(max(values), 1)}

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["permits_outstanding"] = self.permits_outstanding
        doc["rss_mib"] = self.rss_mib()
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SoakResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})
