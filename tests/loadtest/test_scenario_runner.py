"""Scenario files that run a benchmark runner (``loadtest/scenario_runner.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.__main__ import main
from loadtest.scenario_file import SCENARIO_DIR, scenario_files, scenario_path
from loadtest.scenario_runner import RunnerFileError, read_runner_file, runner_args


def test_the_adaptive_scenario_names_its_runner_and_valid_options(tmp_path: Path) -> None:
    """Hazard: ``loadtest scenario adaptive`` (the issue's "a loadtest scenario adaptive")
    not found, or passing options the adaptive bench does not have."""
    path = scenario_path("adaptive")
    assert path == SCENARIO_DIR / "adaptive.yaml"
    data = read_runner_file(path)
    assert data is not None and data["runner"] == "adaptive"
    module, args = runner_args(data, path, tmp_path, smoke=False)
    assert module == "loadtest.adaptive"
    assert (args.phase, args.clients, args.out) == (25, 64, str(tmp_path / "adaptive"))
    assert path not in scenario_files()  # the phase scenarios' validation skips it


def test_a_runner_file_with_an_unknown_option_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    with pytest.raises(RunnerFileError, match="args.phases: not an option"):
        runner_args({"runner": "adaptive", "args": {"phases": 3}}, path, tmp_path, False)
    with pytest.raises(RunnerFileError, match="runner: must be one of"):
        runner_args({"runner": "nope"}, path, tmp_path, False)


def test_adaptive_scenario_smoke_runs_the_tenant_experiment(tmp_path: Path) -> None:
    """Hazard: the scenario dispatch runs nothing, or loses requests, or drops the engine
    TTFT (the client's less the proxy's queue wait, and the mock's own record of ours and the
    tenant's requests apart) that the tenant figures need."""
    assert main(["scenario", "adaptive", "--smoke", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "adaptive" / "adaptive.json").read_text())
    assert set(results) == {"tenant/static8", "tenant/adaptive"}
    for run in results.values():
        assert run["lost"] == 0 and run["tenant_requests"] > 0
        assert run["before"]["engine_ttft_p99_s"] is not None
        assert run["tenant"]["ttft_p99_s"] is not None
        before, after = run["engine_before"], run["engine_after"]
        assert before["ours"]["count"] > 0 and before["tenant"]["count"] == 0
        assert after["tenant"]["count"] > 0 and after["tenant"]["ttft_p50_s"] >= 0.01
        assert after["all"]["count"] == after["ours"]["count"] + after["tenant"]["count"]
    # the mock never held more of ours than the static cap let through
    assert results["tenant/static8"]["mock_peak_before"] <= 8
