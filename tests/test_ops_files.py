"""The shipped operations files: systemd units, alert rules (unit-tested with promtool), compose."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from proxy.cli import build_parser
from tests.promtool import run_promtool

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = ("llm-throttle.service", "llm-throttle-dispatch.service")
_INSTALLED = "/opt/llm-throttle/venv/bin/"


def _unit_options(path: Path) -> dict[str, list[str]]:
    """``Key`` -> values, continuation lines joined (systemd's own syntax, read simply)."""
    options: dict[str, list[str]] = {}
    logical = ""
    for raw in path.read_text().splitlines():
        if raw.startswith(("#", "[")):
            continue
        logical += raw.rstrip("\\").strip() + " "
        if raw.endswith("\\"):
            continue
        if "=" in logical:
            key, _, value = logical.partition("=")
            options.setdefault(key.strip(), []).append(value.strip())
        logical = ""
    return options


def test_proxy_unit_runs_serve_and_checks_the_same_config_first():
    """Hazard: the dispatcher's unit said After=llm-throttle.service, but no such unit
    shipped; and a unit that restarts a bad configuration forever hides the error."""
    proxy = _unit_options(DEPLOY / "llm-throttle.service")
    (start,) = proxy["ExecStart"]
    (pre,) = proxy["ExecStartPre"]
    args = start.split()[1:]
    parsed = build_parser().parse_args(args)
    assert parsed.command == "serve" and parsed.config
    assert pre.split()[1:] == ["check-config", parsed.config]
    assert proxy["RestartPreventExitStatus"] == ["2"]  # cli.EXIT_CONFIG
    dispatch = _unit_options(DEPLOY / "llm-throttle-dispatch.service")
    assert "llm-throttle.service" in dispatch["After"][0].split()


@pytest.mark.parametrize("unit", UNITS)
def test_units_pass_systemd_analyze_verify(unit, tmp_path):
    """Hazard: a misspelt directive is ignored by systemd at start, silently."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    text = (DEPLOY / unit).read_text()
    for name in ("llm-throttle", "hermes"):  # verify wants executables that exist
        text = text.replace(_INSTALLED + name, shutil.which(name) or "/bin/true")
    copy = tmp_path / unit
    copy.write_text(text)
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                            timeout=60, check=False)
    noise = [line for line in result.stderr.splitlines()
             if unit in line and ("Unknown" in line or "Invalid" in line or "Failed" in line)]
    assert result.returncode == 0 and not noise, result.stderr


def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    """Hazard: alert rules that never fire (or always do) are found only in an incident."""
    code, output = run_promtool("check", "rules", str(DEPLOY / "prometheus/alerts.yml"))
    assert code == 0, output
    code, output = run_promtool("test", "rules", str(DEPLOY / "prometheus/alerts_test.yml"))
    assert code == 0, output
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tested = (DEPLOY / "prometheus/alerts_test.yml").read_text()
    assert {"LlmThrottleSaturated", "LlmThrottleQueueTimeouts", "LlmThrottleStoreDegraded",
            "LlmThrottleUpstreamErrors", "LlmThrottleDispatcherHoldingLong"} <= names
    assert all(f"alertname: {name}" in tested for name in names)


def test_compose_dispatcher_has_init_and_prometheus_loads_the_rules():
    """Hazard: without an init process the dispatcher's exited workers stay zombies."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["dispatcher"]["init"] is True
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    prometheus = yaml.safe_load((DEPLOY / "compose/prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_alert_rules_query_series_the_proxy_and_dispatcher_export():
    """Hazard: a renamed metric leaves an alert that can never fire, and promtool's unit
    tests (which feed their own series) would not notice."""
    import re

    from proxy.dispatcher.metrics import DispatcherMetrics
    from proxy.metrics import ProxyMetrics

    exported: set[str] = set()
    for registry in (ProxyMetrics().registry, DispatcherMetrics().registry):
        for family in registry.collect():
            exported |= {family.name, f"{family.name}_total"} | {s.name for s in family.samples}
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name in re.findall(r"\b(llm_throttle_[a-z_]+)", rule["expr"]):
                assert name in exported, f"{rule['alert']}: {name} is not exported"
