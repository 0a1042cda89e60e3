"""Figures taken from a scenario's runs: medians over repeats and ratios within each repeat.

A ratio (proxy vs direct, added time to first token) is computed within each repeat first and
the median taken after, so both sides of it come from the same minutes of the same machine.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from loadtest.scenario_model import RunRecord, Scenario


def median(values: Iterable[float | None]) -> float | None:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def select_runs(runs: Sequence[RunRecord], phase: str,
                target: str | None = None) -> list[RunRecord]:
    return [r for r in runs if r.phase == phase and (target is None or r.target == target)]


def targets_of(runs: Sequence[RunRecord], phase: str) -> list[str]:
    out: list[str] = []
    for r in runs:
        if r.phase == phase and r.target not in out:
            out.append(r.target)
    return out


def server_cpu_ms(run: RunRecord) -> float | None:
    """CPU milliseconds per request of the target's own server processes (None: direct)."""
    if not run.servers or not run.requests:
        return None
    return sum(run.cpu_s.get(n, 0.0) for n in run.servers) / run.requests * 1000


def load_summary(run: RunRecord, name: str | None) -> dict[str, Any]:
    return run.loads[name] if name else next(iter(run.loads.values()))


def lost_requests(run: RunRecord) -> int:
    return sum(int(s["count"]) - int(s["ok"]) for s in run.loads.values())


def per_repeat(runs: Sequence[RunRecord], phase: str, target: str, base: str,
                value: Callable[[RunRecord], float | None],
                combine: Callable[[float, float], float]) -> float | None:
    """Median over repeats of combine(value(target run), value(base run))."""
    out = []
    for run in select_runs(runs, phase, target):
        base_runs = [b for b in select_runs(runs, phase, base) if b.repeat == run.repeat]
        if not base_runs:
            continue
        a, b = value(run), value(base_runs[0])
        if a is not None and b is not None:
            out.append(combine(a, b))
    return median(out)


def against(runs: Sequence[RunRecord], phase: str, target: str, base_phase: str,
             base_target: str, value: Callable[[RunRecord], float | None],
             base_value: Callable[[RunRecord], float | None] | None = None) -> float | None:
    """Median over repeats of value(run) / base_value(the base phase's run, same repeat)."""
    base_value = base_value or value
    out = []
    for run in select_runs(runs, phase, target):
        base = [b for b in select_runs(runs, base_phase, base_target) if b.repeat == run.repeat]
        a, b = value(run), base_value(base[0]) if base else None
        if a is not None and b:
            out.append(a / b)
    return median(out)


def goodput_of(load: str | None = None) -> Callable[[RunRecord], float | None]:
    return lambda r: float(load_summary(r, load)["goodput_rps"])


def stat_of(kind: str, q: str, load: str | None = None) -> Callable[[RunRecord], float | None]:
    return lambda r: load_summary(r, load)[kind][q]


def ratio_of(a: float, b: float) -> float:
    return a / b if b else float("nan")


def diff_of(a: float, b: float) -> float:
    return a - b


def proxy_cap(scenario: Scenario, target: str) -> int | None:
    """The smallest in-flight cap among the target proxy's models and upstreams."""
    from proxy.config import parse_config

    spec = scenario.proxies.get(target)
    if spec is None:
        return None
    config = parse_config(spec.config, environ={"MOCK_URL": "http://127.0.0.1:9",
                                                "REDIS_URL": "redis://127.0.0.1:9/0"})
    caps = [m.max_in_flight for m in config.models.values() if m.max_in_flight] + [
        u.max_in_flight for u in config.upstreams.values() if u.max_in_flight]
    return min(caps) if caps else None




def service_summary(run: RunRecord) -> dict[str, Any]:
    return run.mock.get("service_s") or {}


def tokens_per_s_of(load: str) -> Callable[[RunRecord], float | None]:
    return lambda r: float(load_summary(r, load)["goodput_tokens_per_s"])

