"""Medians over repeats, ratios within each repeat, and the proxy's cap (loadtest.run_stats)."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.run_stats import (
    against,
    diff_of,
    goodput_of,
    lost_requests,
    median,
    per_repeat,
    proxy_cap,
    ratio_of,
    select_runs,
    server_cpu_ms,
    targets_of,
)
from loadtest.scenario_file import load_scenario
from loadtest.scenario_model import RunRecord


def _run(phase: str, target: str, repeat: int, rps: float, *, count: int = 100,
         ok: int = 100, cpu: float = 0.0) -> RunRecord:
    servers = [] if target == "direct" else [target]
    summary: dict[str, Any] = {"count": count, "ok": ok, "goodput_rps": rps}
    return RunRecord(phase, target, repeat, servers, {"main": summary}, {},
                     {n: cpu for n in servers}, 1.0, {})


def test_median_skips_missing_values() -> None:
    assert median([None, 3.0, 1.0, None, 2.0]) == 2.0
    assert median([None, None]) is None


def test_ratio_pairs_runs_of_the_same_repeat() -> None:
    """A ratio taken across repeats would mix minutes of different machine load: each target
    run is paired with the base run of its own repeat, and the median taken after."""
    runs = [_run("p", "direct", 1, 100.0), _run("p", "proxy", 1, 50.0),
            _run("p", "direct", 2, 300.0), _run("p", "proxy", 2, 150.0),
            _run("p", "proxy", 3, 999.0)]  # no base run in repeat 3: left out
    assert per_repeat(runs, "p", "proxy", "direct", goodput_of(), ratio_of) == 0.5
    assert per_repeat(runs, "p", "proxy", "direct", goodput_of(), diff_of) == -100.0
    assert median(goodput_of()(r) for r in select_runs(runs, "p", "direct")) == 200.0


def test_against_compares_with_another_phase() -> None:
    runs = [_run("unloaded", "direct", 1, 40.0), _run("overload", "proxy", 1, 38.0)]
    assert against(runs, "overload", "proxy", "unloaded", "direct",
                   goodput_of()) == pytest.approx(0.95)


def test_targets_keep_their_order_and_cpu_is_per_request() -> None:
    runs = [_run("p", "proxy", 1, 1.0, cpu=0.05), _run("p", "direct", 1, 1.0),
            _run("p", "proxy", 2, 1.0), _run("q", "nginx", 1, 1.0)]
    assert targets_of(runs, "p") == ["proxy", "direct"]
    assert server_cpu_ms(runs[0]) == pytest.approx(0.5)  # 0.05 s over 100 requests
    assert server_cpu_ms(runs[1]) is None  # direct: no server of its own


def test_lost_counts_every_load() -> None:
    run = _run("p", "proxy", 1, 1.0, count=10, ok=7)
    run.loads["other"] = {"count": 5, "ok": 4, "goodput_rps": 1.0}
    assert lost_requests(run) == 4


def test_proxy_cap_is_the_smallest_cap_of_the_target() -> None:
    scenario = load_scenario("overload")
    caps = [m.get("max_in_flight") for m in scenario.proxies["proxy"].config["models"].values()]
    cap = proxy_cap(scenario, "proxy")
    assert cap is not None and cap <= min(c for c in caps if c)
    assert proxy_cap(scenario, "direct") is None
