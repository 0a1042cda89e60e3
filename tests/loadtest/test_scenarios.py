"""Scenario files validate, their analyses compute what the report claims, and each scenario
runs end to end in a few seconds with ``--smoke`` (the real benchmark runs stay out of here)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from loadtest.analysis import Findings, analyze, splice, write_section
from loadtest.demo import run_demo
from loadtest.processes import child_pids, cpu_seconds, find_nginx, redis_store_available
from loadtest.scenario import run_scenario
from loadtest.scenario_file import ScenarioError, load_scenario, parse_scenario, scenario_files
from loadtest.scenario_model import RunRecord, Scenario, ScenarioResult

EXPECTED = {"overhead", "streaming", "overload", "priority", "multihost", "fairness"}


def _one_phase(scenario: Scenario, name: str) -> Scenario:
    return dataclasses.replace(scenario, phases=tuple(
        p for p in scenario.phases if p.name == name))


# -- files -----------------------------------------------------------------------------------


def test_every_scenario_file_validates() -> None:
    names = set()
    for path in scenario_files():
        scenario = load_scenario(path)
        names.add(scenario.name)
        assert scenario.phases and scenario.repeat >= 1
        smoked = scenario.smoked()
        assert smoked.repeat == 1
        for phase in smoked.phases:
            for load in phase.loads.values():
                assert (load.get("duration") or 0) <= 2 and (load.get("requests") or 0) <= 60
    assert names >= EXPECTED


def test_a_scenario_is_found_by_name() -> None:
    assert load_scenario("overload").path.name == "overload.yaml"


def test_bad_scenario_lists_every_problem(tmp_path: Path) -> None:
    data = {
        "analysis": "overload",
        "mock": {"batch_sise": 4},
        "proxies": {"proxy": {"config": {"upstreams": {}, "models": {}}}},
        "phases": [{"name": "overload", "targets": ["direct", "nginx"],
                    "load": {"clients": 4, "bogus": 1}}],
    }
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data, tmp_path / "bad.yaml")
    text = "\n".join(info.value.problems)
    assert "mock.batch_sise: not a mock setting" in text
    assert "proxies.proxy.config.upstreams: at least one upstream" in text
    assert "unknown target 'nginx'" in text  # nginx: true was not set
    assert "bogus: unknown load setting" in text
    assert "needs a duration and/or a requests bound" in text
    assert "needs a phase named 'unloaded'" in text


# -- analysis, on made-up runs ---------------------------------------------------------------


def _summary(count: int, ok: int, rps: float, p50: float, p99: float,
             ttft50: float | None = None) -> dict[str, Any]:
    dist = {"p50": p50, "p90": p99, "p99": p99, "max": p99, "mean": p50}
    ttft = {"p50": ttft50, "p90": ttft50, "p99": ttft50, "max": ttft50, "mean": ttft50}
    return {"count": count, "ok": ok, "goodput_rps": rps, "latency": dist, "ttft": ttft}


def _run(phase: str, target: str, repeat: int, summary: dict[str, Any], *,
         servers: list[str] | None = None, cpu: float = 0.0, peak: int = 4,
         service_p50: float = 0.1) -> RunRecord:
    servers = servers if servers is not None else ([] if target == "direct" else [target])
    return RunRecord(phase, target, repeat, servers, {"main": summary}, {},
                     {n: cpu for n in servers}, 1.0,
                     {"peak": peak, "service_s": {"p50": service_p50, "p99": service_p50}},
                     {"queue_depth": 0, "in_flight": 0} if target == "proxy" else None)


def test_overload_analysis_checks_goodput_service_and_cap() -> None:
    scenario = load_scenario("overload")
    runs = []
    for rep in (1, 2, 3):
        runs += [
            _run("unloaded", "direct", rep, _summary(400, 400, 40.0, 0.1, 0.11)),
            _run("overload", "direct", rep, _summary(150, 150, 7.0, 5.0, 6.0), peak=40,
                 service_p50=5.0),
            _run("overload", "proxy", rep, _summary(800, 800, 39.0 + rep * 0.1, 1.0, 1.1),
                 service_p50=0.102),
        ]
    findings = analyze(ScenarioResult(scenario, runs, Path("."), smoke=False))
    assert findings.failed == []
    assert findings.numbers["capacity_rps"] == 40.0
    assert findings.numbers["proxy.goodput_rps"] == pytest.approx(39.2)
    assert findings.numbers["proxy.goodput_vs_capacity"] == pytest.approx(0.98)
    assert findings.numbers["proxy.service_p50_vs_unloaded"] == pytest.approx(1.02)
    verdicts = {row[0]: row[3] for row in findings.rows}
    assert verdicts["proxy: goodput under 10x overload"] == "met"
    assert verdicts["direct: goodput under 10x overload"] == ""  # shown, not judged

    runs[-1] = _run("overload", "proxy", 3, _summary(800, 790, 30.0, 1.0, 1.1), peak=5)
    findings = analyze(ScenarioResult(scenario, runs, Path("."), smoke=False))
    assert any("requests lost" in f for f in findings.failed)
    assert any("peak in flight" in f for f in findings.failed)


def test_overhead_ratios_are_taken_within_each_repeat() -> None:
    scenario = _one_phase(load_scenario("overhead"), "closed32")
    runs = []
    for rep, scale in ((1, 1.0), (2, 2.0), (3, 3.0)):  # the machine gets faster each repeat
        runs += [
            _run("closed32", "direct", rep, _summary(1000, 1000, 1000 * scale, 0.01, 0.02)),
            _run("closed32", "proxy", rep, _summary(1000, 1000, 500 * scale, 0.02, 0.04),
                 cpu=0.2 * rep),
        ]
    findings = analyze(ScenarioResult(scenario, runs, Path("."), smoke=False))
    assert findings.numbers["closed32.proxy.rps_vs_direct"] == pytest.approx(0.5)
    assert findings.numbers["closed32.proxy.cpu_ms_per_request"] == pytest.approx(0.4)
    assert ("closed32: proxy CPU per request", "0.400 ms", "<= 0.3 ms", "**MISSED**") in \
        findings.rows


def test_splice_replaces_only_its_own_section() -> None:
    page = ("# B\n\n<!-- loadtest:a begin -->\nold a\n<!-- loadtest:a end -->\n\n"
            "## Redis store\nkept\n")
    page = splice(page, "a", "new a\n")
    assert "new a" in page and "old a" not in page and "## Redis store\nkept" in page
    page = splice(page, "b", "section b")
    assert page.index("section b") > page.index("kept")
    assert splice(page, "b", "b2").count("loadtest:b begin") == 1


def test_cpu_time_of_a_process_tree() -> None:
    assert cpu_seconds(os.getpid()) > 0
    assert cpu_seconds(2**22 + 12345) == 0.0  # no such process
    assert isinstance(child_pids(os.getpid()), list)


# -- smoke runs (real subprocesses, a few seconds each) ----------------------------------------


async def test_overhead_smoke(tmp_path: Path) -> None:
    scenario = _one_phase(load_scenario("overhead"), "closed32")
    result = await run_scenario(scenario, tmp_path / "out", smoke=True, log=lambda _: None)
    assert result.skipped is None
    targets = [r.target for r in result.runs]
    assert targets == ["direct", *(["nginx"] if find_nginx() else []), "passthrough", "proxy"]
    for run in result.runs:
        summary = run.loads["main"]
        assert summary["ok"] == summary["count"] > 0
        assert Path(run.files["main"]).exists()
    proxy_run = result.runs[-1]
    assert proxy_run.cpu_s["proxy"] > 0  # measured from /proc
    assert proxy_run.proxy_end == {"queue_depth": 0, "in_flight": 0}
    findings = analyze(result)
    assert findings.numbers["closed32.proxy.cpu_ms_per_request"] is not None
    assert (tmp_path / "out" / "runs.json").exists()


async def test_streaming_smoke_measures_added_ttft(tmp_path: Path) -> None:
    scenario = _one_phase(load_scenario("streaming"), "paced16")
    scenario = dataclasses.replace(scenario, phases=tuple(
        dataclasses.replace(p, targets=("direct", "proxy")) for p in scenario.phases))
    result = await run_scenario(scenario, tmp_path, smoke=True, log=lambda _: None)
    assert [r.target for r in result.runs] == ["direct", "proxy"]
    assert all(r.loads["main"]["ttft"]["p50"] is not None for r in result.runs)
    numbers = analyze(result).numbers
    assert numbers["paced16.proxy.ttft_added_p50_ms"] is not None


async def test_overload_smoke_holds_the_cap_and_loses_nothing(tmp_path: Path) -> None:
    result = await run_scenario(load_scenario("overload"), tmp_path / "out", smoke=True,
                                log=lambda _: None)
    by = {(r.phase, r.target): r for r in result.runs}
    assert by["overload", "direct"].mock["peak"] == 40  # uncapped: everyone at once
    assert by["overload", "proxy"].mock["peak"] == 4
    page = tmp_path / "bench.md"
    page.write_text("# Benchmarks\n\n## Redis store\nby hand\n")
    section, failed = write_section(result, "python -m loadtest scenario overload --smoke",
                                    tmp_path / "img", page)
    assert failed == []
    text = page.read_text()
    assert "## Redis store\nby hand" in text and "## Machine" in text
    assert "python -m loadtest scenario overload --smoke" in section
    assert "(img/overload-overload-upstream-in-flight.png)" in section
    assert (tmp_path / "img" / "overload-overload-upstream-in-flight.png").exists()


@pytest.mark.slow
async def test_priority_smoke(tmp_path: Path) -> None:
    result = await run_scenario(load_scenario("priority"), tmp_path, smoke=True,
                                log=lambda _: None)
    findings: Findings = analyze(result)
    assert findings.failed == []
    assert findings.numbers["flood.proxy.interactive_p99_s"] < \
        findings.numbers["flood.fifo.interactive_p99_s"]


@pytest.mark.slow
@pytest.mark.skipif(not redis_store_available(), reason="proxy/limits/redis.py not here yet")
async def test_multihost_smoke(tmp_path: Path) -> None:
    result = await run_scenario(load_scenario("multihost"), tmp_path, smoke=True,
                                log=lambda _: None)
    assert result.skipped is None
    assert analyze(result).failed == []


@pytest.mark.slow
async def test_fairness_smoke_shares_tokens_by_weight(tmp_path: Path) -> None:
    """The weighted client (c, weight 2) gets more tokens than a (weight 1, long requests)
    through the proxy, while fifo hands them out by request count."""
    result = await run_scenario(load_scenario("fairness"), tmp_path, smoke=True,
                                log=lambda _: None)
    findings: Findings = analyze(result)
    assert findings.failed == []
    numbers = findings.numbers
    assert numbers["batch.proxy.c.tokens_per_s"] > numbers["batch.proxy.a.tokens_per_s"]
    assert numbers["flood.proxy.batch_share"] > numbers["flood.fifo.batch_share"]


async def test_multihost_skips_cleanly_without_the_redis_store(tmp_path: Path) -> None:
    if redis_store_available():
        pytest.skip("the Redis store is here: the scenario runs (see test_multihost_smoke)")
    result = await run_scenario(load_scenario("multihost"), tmp_path, smoke=True)
    assert result.skipped is not None and "proxy/limits/redis.py" in result.skipped
    assert result.runs == []


async def test_demo_shows_the_cap_holding(tmp_path: Path) -> None:
    lines: list[str] = []
    args = argparse.Namespace(clients=12, duration=1.5, cap=3, batch=3, ttft=0.05, tpot=0.005,
                              tokens=8)
    outcome = await run_demo(args, lines.append)
    assert outcome.success, "\n".join(lines)
    assert outcome.peak == 3 and outcome.requests == outcome.ok > 0
    assert any(line.endswith("| errors 0") and "/3 | queued" in line for line in lines)
    assert lines[-1] == "OK"
