"""A scenario's Markdown section and splicing it into a page (loadtest.report_section)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import loadtest.analysis
from loadtest.findings import Findings
from loadtest.report_section import render_section, splice
from loadtest.scenario_file import load_scenario
from loadtest.scenario_model import RunRecord, ScenarioResult


def _run(target: str, repeat: int, rps: float, lost: int = 0) -> RunRecord:
    dist = {"p50": 0.01, "p90": 0.02, "p99": 0.02, "max": 0.02, "mean": 0.01}
    summary: dict[str, Any] = {"count": 100, "ok": 100 - lost, "goodput_rps": rps,
                               "latency": dist, "ttft": dist}
    servers = [] if target == "direct" else [target]
    return RunRecord("closed32", target, repeat, servers, {"main": summary}, {},
                     {n: 0.02 for n in servers}, 1.0, {"peak": 3}, foreign_cpu_s=0.5)


def test_section_has_the_key_numbers_and_a_table_per_phase() -> None:
    scenario = load_scenario("overhead")
    runs = [_run("direct", 1, 100.0), _run("proxy", 1, 80.0, lost=2)]
    findings = Findings()
    findings.add("closed32: proxy req/s vs direct", "80.0 req/s = 80.0%")
    result = ScenarioResult(scenario, runs, Path("."), smoke=False, command="cmd --x",
                            when="2026-12-01 12:00 UTC", code="abc1234")
    section = render_section(result, findings, "ignored", {}, None)
    assert section.startswith(f"## {scenario.title}\n")
    assert "cmd --x" in section and "`abc1234`" in section and "2026-12-01 12:00 UTC" in section
    assert "| closed32: proxy req/s vs direct | 80.0 req/s = 80.0% |  |  |" in section
    assert "**Phase `closed32`**" in section
    assert "| proxy | main | 80.0 | 80.0% | 10.0 / 20.0 | 10.0 / 20.0 | 0.200 | 3 | 2 | 0.50 |" \
        in section
    for phase in scenario.phases:  # phases without runs get no table
        assert (f"**Phase `{phase.name}`**" in section) == (phase.name == "closed32")


def test_splice_keeps_other_sections() -> None:
    page = splice("# B\n\nhand-written\n", "x", "one")
    page = splice(page, "y", "two")
    page = splice(page, "x", "three")
    assert "hand-written" in page and "two" in page and "three" in page and "one" not in page


def test_the_analysis_module_still_offers_its_entry_points() -> None:
    """Scenario runner and soak report import these from loadtest.analysis."""
    for name in ("Findings", "analyze", "required_phases", "code_version", "write_section",
                 "splice", "render_section", "machine_info", "machine_section", "median",
                 "server_cpu_ms", "proxy_cap", "PASS", "MISS", "INFO"):
        assert hasattr(loadtest.analysis, name), name
