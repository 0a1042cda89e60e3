"""/metrics follows Prometheus conventions, and the shipped dashboard queries what it exports."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.conftest import one_model_config
from tests.promtool import run_promtool

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "deploy/compose/grafana/dashboards").glob("*.json"))
MESSAGES = [{"role": "user", "content": "hi"}]
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", re.MULTILINE)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="')


async def _scrape_after_traffic(mock_llm, make_proxy, openai_client) -> str:
    """A proxy that has served a plain call, a stream, a 401 and a 429, then scraped."""
    mock = await mock_llm(ttft_s=0, tpot_s=0, output_tokens=3)
    config = one_model_config(mock.url, max_in_flight=2, requests_per_minute=60, burst_s=2)
    config["gpus"] = {"g0": {"max_in_flight": 4}}
    config["upstreams"]["up"]["gpus"] = ["g0"]
    # adaptive: its llm_throttle_adaptive_* gauges are on the dashboard too
    config["upstreams"]["up"].update(max_in_flight=8, adaptive=True, engine="none")
    config["clients"] = {"c": {"key": "client-key", "tokens_per_minute": 100000}}
    config["queue"] = {"max_depth": 0}  # over the bucket: 429 at once, no waiting
    proxy = await make_proxy(config)
    client = openai_client(proxy.url)
    await client.chat.completions.create(model="m", messages=MESSAGES)
    async for _ in await client.chat.completions.create(model="m", messages=MESSAGES,
                                                        stream=True):
        pass
    with pytest.raises(openai.RateLimitError):  # the burst of 2 is spent
        await client.chat.completions.create(model="m", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        await openai_client(proxy.url, key="wrong").models.list()
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/metrics", "/healthz", "/metrics"):
            async with session.get(proxy.url + path) as response:
                assert response.status == 200
                text = await response.text()
    return text


def _samples(text: str) -> dict[str, set[str]]:
    """Metric name -> the label names its samples carry."""
    out: dict[str, set[str]] = {}
    for name, labels in _SAMPLE.findall(text):
        out.setdefault(name, set()).update(_LABEL.findall(labels or ""))
    return out


async def test_metrics_pass_promtool_and_carry_the_expected_series(mock_llm, make_proxy,
                                                                   openai_client):
    """Hazard: a gauge named ``queue_depth_total`` (promtool refuses a gauge with _total),
    ``resource="gpu:h100-0"`` packing two labels in one, scrapes and health checks counted as
    proxied requests, and no ``process_*`` or build-info series."""
    text = await _scrape_after_traffic(mock_llm, make_proxy, openai_client)
    samples = _samples(text)
    assert "llm_throttle_queue_depth_total" not in samples
    assert "llm_throttle_queue_requests" in samples
    assert samples["llm_throttle_in_flight"] == {"kind", "name"}
    assert 'llm_throttle_in_flight{kind="gpu",name="g0"} 0.0' in text
    assert samples["llm_throttle_bucket_level"] == {"limit", "kind", "name"}
    assert 'llm_throttle_bucket_capacity{kind="model",limit="rpm",name="m"} 2.0' in text
    assert re.search(r'^llm_throttle_build_info\{python="[0-9.]+",version="[^"]+"\} 1\.0$',
                     text, re.MULTILINE)
    assert "process_resident_memory_bytes" in samples and "python_info" in samples
    assert samples["llm_throttle_flow_served_tokens_total"] == {"class", "flow"}
    assert samples["llm_throttle_flow_virtual_tokens"] == {"class", "flow"}
    answered = [line for line in text.splitlines()
                if line.startswith("llm_throttle_requests_total{")]
    # two answered, one 429, one 401; the /healthz and /metrics calls are not in it
    assert sum(float(line.rsplit(" ", 1)[1]) for line in answered) == 4, answered
    code, output = await asyncio.to_thread(run_promtool, "check", "metrics", stdin=text)
    assert code == 0, output


async def test_dashboard_selectors_and_groupings_use_exported_labels(mock_llm, make_proxy,
                                                                     openai_client):
    """Hazard: renaming a label (``resource`` -> ``kind``/``name``) leaves dashboard panels
    silently empty: every label a panel selects or groups by must exist on its metric."""
    samples = _samples(await _scrape_after_traffic(mock_llm, make_proxy, openai_client))
    samples.update(_samples(_dispatcher_scrape_after_a_tick()))
    assert DASHBOARDS
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", ()):
                expr = target["expr"]
                names = [n for n in re.findall(r"\b(llm_throttle_[a-z_]+)", expr)]
                labels: set[str] = {"le", "instance", "job"}
                for name in names:
                    assert name in samples, f"{path.name} {panel['title']}: no {name}"
                    labels |= samples[name]
                for name, selector in re.findall(r"(llm_throttle_[a-z_]+)\{([^}]*)\}", expr):
                    for label in re.findall(r"([a-z_]+)\s*[=!]~?", selector):
                        assert label in samples[name], f"{panel['title']}: {name} no {label}"
                if names:
                    for group in re.findall(r"\bby \(([^)]*)\)", expr):
                        for label in filter(None, (g.strip() for g in group.split(","))):
                            assert label in labels, f"{panel['title']}: by {label}"


def _dispatcher_scrape_after_a_tick() -> str:
    """The dispatcher's exposition after one tick over one board (every labelled series)."""
    from proxy.dispatcher.metrics import DispatcherMetrics
    from proxy.dispatcher.report import BoardTick, TickReport

    metrics = DispatcherMetrics()
    board = BoardTick(running=1, ready=2, todo=0, spawned=("t1",), reclaimed=1,
                      failures={"crashed": 1}, by_status={"ready": 2, "running": 1},
                      oldest_ready_s=3.0, max_arg=2)
    metrics.observe(TickReport(number=1, at=0.0, backlog=0, cap=3, in_flight=1, target=6,
                               tasks_per_slot=2.0, boards={"b": board}))
    metrics.hermes_failures.labels(command="boards").inc()
    return metrics.render().decode()


def test_dispatcher_metrics_pass_promtool():
    """Hazard: the alert rules query the dispatcher's series too; they must be well formed."""
    from prometheus_client.exposition import generate_latest

    from proxy.dispatcher.metrics import DispatcherMetrics

    text = generate_latest(DispatcherMetrics().registry).decode()
    assert "llm_throttle_dispatch_holding" in text
    text = _dispatcher_scrape_after_a_tick()  # with every labelled series  # alerts.yml: LlmThrottleDispatcherHoldingLong
    code, output = run_promtool("check", "metrics", stdin=text)
    assert code == 0, output
