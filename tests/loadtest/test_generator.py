"""The load generator measures what it claims, and the report renders it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loadtest.__main__ import main
from loadtest.generator import (
    ClientClass,
    LoadSpec,
    parse_mix,
    parse_proxy_status,
    parse_vllm_gauges,
    percentile,
    run_load,
    streamed_rate,
)
from loadtest.mock_llm import MockLLM, MockLLMConfig, run_mock_llm
from loadtest.report import write_report

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def mock() -> AsyncIterator[MockLLM]:
    config = MockLLMConfig(batch_size=4, ttft_s=0.01, tpot_s=0.002, output_tokens=8)
    async with run_mock_llm(config) as server:
        yield server


def _assert_ordered(dist: dict[str, float | None]) -> None:
    p50, p90, p99, top = dist["p50"], dist["p90"], dist["p99"], dist["max"]
    assert p50 is not None and p90 is not None and p99 is not None and top is not None
    assert 0 < p50 <= p90 <= p99 <= top


async def test_closed_loop_stream(mock: MockLLM, tmp_path: Path) -> None:
    spec = LoadSpec(
        base_url=mock.url + "/v1", clients=4, requests=24, max_tokens=6, stream=True,
        upstream_metrics=[mock.url + "/metrics"], proxy_status=mock.url + "/mock/stats",
        sample_interval=0.05, label="closed",
    )
    result = await run_load(spec)
    s = result.summary
    assert (s["count"], s["ok"], s["errors"]) == (24, 24, {})
    assert s["completion_tokens"] == 24 * 6
    assert mock.state.peak == 4  # closed loop: never more than the clients in flight
    _assert_ordered(s["latency"])
    _assert_ordered(s["ttft"])
    assert s["ttft"]["p50"] < s["latency"]["p50"]
    assert s["goodput_tokens_per_s"] == pytest.approx(24 * 6 / s["elapsed_s"])
    assert all(r.prompt_tokens == 50 for r in result.records)
    ups = [p["upstream_in_flight"] for p in result.series if "upstream_in_flight" in p]
    assert ups and max(ups) <= 4
    # the mock's stats are not a proxy status document: fields are absent, not invented
    assert all(p["queue_depth"] is None for p in result.series)
    saved = json.loads(result.save(tmp_path / "closed.json").read_text())
    assert saved["label"] == "closed" and len(saved["records"]) == 24
    # every completion token is counted once, in the slot it streamed in
    assert sum(s["streamed_tokens"]["tokens"]) == pytest.approx(24 * 6)


def test_streamed_rate_counts_the_tokens_that_arrived_in_the_window() -> None:
    """Hazard: a closed loop's whole-run figure counts every request started before the end
    in full, so a client whose long requests finish alone after the others stopped got their
    tokens too; a window counts only what streamed in it."""
    summary = {"streamed_tokens": {"slot_s": 0.5, "tokens": [10, 20, 30, 40, 500]}}
    assert streamed_rate(summary, 0.5, 2.0) == pytest.approx((20 + 30 + 40) / 1.5)
    assert streamed_rate(summary, 0.0, 0.5) == pytest.approx(20)
    assert streamed_rate({"ok": 1}, 0.0, 1.0) is None  # not streamed: no per-slot counts


async def test_open_loop_mix_no_stream(mock: MockLLM) -> None:
    spec = LoadSpec(
        base_url=mock.url + "/v1", rate=60, duration=0.5, stream=False, seed=7,
        mix=[ClientClass("interactive", "key-i", 0.3), ClientClass("batch", "key-b", 0.7)],
    )
    result = await run_load(spec)
    s = result.summary
    assert 10 <= s["count"] <= 70 and s["ok"] == s["count"]
    assert set(s["by_client"]) == {"interactive", "batch"}
    assert all(r.ttft is None and r.completion_tokens == 8 for r in result.records)
    assert max(r.start for r in result.records) < 0.5
    keys = {r.headers["authorization"] for r in mock.state.requests_to("/v1/chat/completions")}
    assert keys <= {"Bearer key-i", "Bearer key-b"}
    assert "key-i" not in json.dumps(result.to_json())  # keys are masked in results


@pytest.mark.parametrize(
    ("fault", "error"),
    [("refuse-429", "http_429"), ("die-mid-stream", "incomplete_stream"), ("hang", "timeout")],
)
async def test_errors_are_classified(mock: MockLLM, fault: str, error: str) -> None:
    spec = LoadSpec(
        base_url=mock.url + "/v1", clients=2, requests=2, timeout=0.3,
        headers={"x-mock-fault": fault},
    )
    s = (await run_load(spec)).summary
    assert (s["count"], s["ok"], s["errors"]) == (2, 0, {error: 2})
    assert s["latency"]["p50"] is None  # percentiles are of successful requests only


def test_parsers() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([], 99) is None
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="a"} 3.0\n'
        'vllm:num_requests_running{model_name="b"} 1.0\n'
        "vllm:num_requests_waiting 2\n"
    )
    assert parse_vllm_gauges(text) == {"running": 4.0, "waiting": 2.0}
    doc = {"queue": {"depth": 5}, "models": {"m": {"in_flight": 4, "queued": 5}}}
    assert parse_proxy_status(doc) == {"queue_depth": 5.0, "proxy_in_flight": 4.0}
    assert parse_proxy_status({"models": {"m": {"queued": 2}}})["queue_depth"] == 2.0
    assert parse_proxy_status(None) == {"queue_depth": None, "proxy_in_flight": None}
    assert parse_mix("i:K1:0.2,b:K2") == [ClientClass("i", "K1", 0.2), ClientClass("b", "K2")]


async def test_report_writes_markdown_and_pngs(mock: MockLLM, tmp_path: Path) -> None:
    paths = []
    for label, clients in (("direct", 2), ("proxy", 6)):
        spec = LoadSpec(base_url=mock.url + "/v1", clients=clients, requests=12, label=label,
                        upstream_metrics=[mock.url + "/metrics"], sample_interval=0.05)
        paths.append((await run_load(spec)).save(tmp_path / f"{label}.json"))
    md, pngs = write_report(paths, tmp_path / "img" / "cmp")
    names = sorted(p.name for p in pngs)
    assert names == ["cmp-latency-cdf.png", "cmp-throughput.png", "cmp-upstream-in-flight.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    text = md.read_text()
    assert "| direct | closed x2 | 12 | 12 |" in text and "| proxy |" in text
    assert "(cmp-latency-cdf.png)" in text


def test_cli_run_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mock = subprocess.Popen(
        [sys.executable, "-m", "loadtest", "mock-llm", "--port", "0", "--ttft", "0.005",
         "--tpot", "0.001"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert mock.stdout is not None
        url = mock.stdout.readline().split()[-1]
        out = tmp_path / "cli.json"
        assert main(["run", "--base-url", url + "/v1", "--clients", "3", "--requests", "9",
                     "--no-stream", "--quiet", "--out", str(out)]) == 0
        assert "9 requests, 9 ok" in capsys.readouterr().out
        assert json.loads(out.read_text())["summary"]["count"] == 9
        assert main(["report", str(out), "--out", str(tmp_path / "r")]) == 0
        assert "| cli | closed x3 | 9 | 9 |" in capsys.readouterr().out
        assert (tmp_path / "r-latency-cdf.png").exists()
    finally:
        mock.terminate()
        mock.wait(timeout=5)
