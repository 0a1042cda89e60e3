"""What each kind of scenario checks, on made-up runs (loadtest.verdicts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtest.findings import INFO, MISS, PASS
from loadtest.scenario_file import load_scenario
from loadtest.scenario_model import ANALYSES, RunRecord, ScenarioResult
from loadtest.verdicts import analyze, required_phases


def _load(p50: float, p99: float, rps: float = 10.0) -> dict[str, Any]:
    dist = {"p50": p50, "p90": p99, "p99": p99, "max": p99, "mean": p50}
    return {"count": 100, "ok": 100, "goodput_rps": rps, "latency": dist, "ttft": dist}


def _run(phase: str, target: str, repeat: int, interactive_p99: float,
         peak: int = 2) -> RunRecord:
    loads = {"interactive": _load(0.1, interactive_p99)}
    if phase == "flood":
        loads["batch"] = _load(1.0, 2.0, rps=20.0)
    servers = [] if target == "direct" else [target]
    return RunRecord(phase, target, repeat, servers, loads, {}, {n: 0.1 for n in servers}, 1.0,
                     {"peak": peak})


def test_every_analysis_names_the_phases_it_reads() -> None:
    for kind in ANALYSES:
        scenario = load_scenario(kind)
        assert {p.name for p in scenario.phases} >= set(required_phases(kind))
    assert required_phases("no such analysis") == ()


def test_priority_judges_only_the_prioritising_proxy() -> None:
    """The fifo and direct targets are the baselines the proxy is compared with: shown, never
    judged; a proxy whose interactive p99 under a flood exceeds the target is marked missed."""
    scenario = load_scenario("priority")
    limit = scenario.targets["interactive_p99_vs_alone"]
    runs = [_run("alone", "proxy", 1, 0.2), _run("flood", "direct", 1, 5.0, peak=40),
            _run("flood", "fifo", 1, 4.0), _run("flood", "proxy", 1, 0.2 * (limit - 0.5))]
    findings = analyze(ScenarioResult(scenario, runs, Path("."), smoke=False))
    verdicts = {row[0]: row[3] for row in findings.rows}
    assert verdicts["flood via proxy: interactive latency p50 / p99"] == PASS
    assert verdicts["flood via fifo: interactive latency p50 / p99"] == INFO
    assert verdicts["flood via direct: interactive latency p50 / p99"] == INFO
    assert findings.numbers["flood.proxy.batch_goodput_rps"] == 20.0
    assert findings.failed == []

    runs[-1] = _run("flood", "proxy", 1, 0.2 * (limit + 1))
    findings = analyze(ScenarioResult(scenario, runs, Path("."), smoke=False))
    verdicts = {row[0]: row[3] for row in findings.rows}
    assert verdicts["flood via proxy: interactive latency p50 / p99"] == MISS
