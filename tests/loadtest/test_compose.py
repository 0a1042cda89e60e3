"""The docker-compose stack hangs together: services, mounted files, configs and dashboard.

No container is started here; ``docker compose config -q`` runs where a docker client with the
compose plugin is installed (no engine needed), and is skipped elsewhere.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SERVICES = {"redis", "proxy-1", "proxy-2", "mock-llm", "dispatcher", "prometheus", "grafana"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _bind_sources(service: dict[str, Any]) -> list[str]:
    out = []
    for volume in service.get("volumes", []):
        source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
        if source.startswith((".", "/")):
            out.append(source)
    return out


def test_every_service_is_there(compose: dict[str, Any]) -> None:
    assert SERVICES <= set(compose["services"])


def test_every_mounted_file_and_build_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for source in _bind_sources(service):
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / (build.get("dockerfile", "Dockerfile")
                                    if isinstance(build, dict) else "Dockerfile")
            assert dockerfile.exists(), f"{name} builds from missing {dockerfile}"
            if isinstance(build, dict) and "target" in build:
                assert f" AS {build['target']}" in dockerfile.read_text(), \
                    f"{name}: no stage {build['target']!r} in {dockerfile.name}"


def test_both_proxies_share_one_redis_store(compose: dict[str, Any]) -> None:
    from proxy.config import load_config

    for name in ("proxy-1", "proxy-2"):
        service = compose["services"][name]
        mounts = dict(v.split(":")[:2] for v in service["volumes"])
        inside = service["command"][service["command"].index("--config") + 1]
        source = next(s for s, target in mounts.items() if target == inside)
        config = load_config(ROOT / source, environ={})
        assert config.store == "redis://redis:6379/0"
        assert config.listen_port == 8080 and config.listen_host == "0.0.0.0"
        assert any(m.max_in_flight for m in config.models.values())
        assert all(u.url.startswith("http://mock-llm:8000") for u in config.upstreams.values())


def test_dockerfile_runs_the_proxy_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("# ") and "FROM python:3.11-slim AS proxy" in text
    assert "pip install ." in text and "USER 10001" in text
    assert 'CMD ["llm-throttle", "serve", "--config", "/etc/llm-throttle/config.yaml"]' in text


def test_commands_parse_with_the_real_clis(compose: dict[str, Any]) -> None:
    """The flags in the compose file exist in the CLIs they call (no typo reaches a deploy)."""
    from loadtest.__main__ import main as loadtest_main
    from proxy.cli import build_parser

    parser = build_parser()
    for name in ("proxy-1", "proxy-2", "dispatcher"):
        argv = compose["services"][name]["command"]
        assert argv[0] == "llm-throttle"
        parser.parse_args(argv[1:])
    for name in ("mock-llm", "load"):
        argv = compose["services"][name]["command"]
        assert argv[:3] == ["python", "-m", "loadtest"]
        with pytest.raises(SystemExit) as exc:
            loadtest_main([*argv[3:4], "--help"])
        assert exc.value.code == 0
    load = compose["services"]["load"]["command"]
    assert load.count("--base-url") == 2, "the load should spread over both replicas"


def test_prometheus_scrapes_both_proxies() -> None:
    config = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    assert {"proxy-1:8080", "proxy-2:8080", "mock-llm:8000"} <= targets


def test_dashboard_queries_metrics_the_proxy_exports() -> None:
    from proxy.capacity.metrics import CapacityGauges
    from proxy.dispatcher.metrics import DispatcherMetrics
    from proxy.metrics import ProxyMetrics

    metrics = ProxyMetrics()
    CapacityGauges(metrics.registry)  # the proxy registers them beside its own
    exported = set()
    families = [*metrics.registry.collect(), *DispatcherMetrics().registry.collect()]
    for family in families:
        exported.add(family.name)
        exported.update(s.name for s in family.samples)
    # Histograms and counters only appear with their suffixes once observed: add them.
    exported |= {f"{n}_{s}" for n in exported for s in ("bucket", "total", "sum", "count")}

    dashboard = json.loads(
        (ROOT / "deploy/compose/grafana/dashboards/llm-throttle.json").read_text())
    datasource = yaml.safe_load(
        (ROOT / "deploy/compose/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"In flight vs cap", "Queue depth", "Queue wait", "Rejections",
            "Tokens per minute per model"} <= titles
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        for target in panel.get("targets", []):  # a row has none
            for metric in set(_metric_names(target["expr"])):
                if metric.startswith("llm_throttle_"):
                    assert metric in exported, f"{panel['title']}: unknown metric {metric}"
    provider = yaml.safe_load(
        (ROOT / "deploy/compose/grafana/provisioning/dashboards/llm-throttle.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def _metric_names(expr: str) -> list[str]:
    import re

    return re.findall(r"\b(llm_throttle_[a-z_]+|vllm:[a-z_]+)", expr)


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=20,
                               check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker client with compose here")
    result = subprocess.run([*cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True,
                            text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, f"{shlex.join(cli)} config: {result.stderr}"
