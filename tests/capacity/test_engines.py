"""Engine signals read from the mock LLM in each engine's own format (vLLM, llama.cpp, Ollama),
and the parsers on the real engines' text."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from proxy.capacity.engines import (
    Engine,
    EnginePoller,
    EngineProbe,
    parse_llamacpp,
    parse_vllm_metrics,
)

VLLM_OLD = """# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="a"} 2.0
vllm:num_requests_waiting{engine="1",model_name="a"} 1.0
vllm:num_requests_running{engine="0",model_name="a"} 8.0
vllm:gpu_cache_usage_perc{engine="0",model_name="a"} 0.93
"""


def test_vllm_sums_label_sets_and_reads_the_older_kv_name():
    """Hazard: reading only the first engine's series (data-parallel vLLM) or missing the KV
    gauge of releases before kv_cache_usage_perc."""
    s = parse_vllm_metrics(VLLM_OLD, 1.0)
    assert s is not None and (s.waiting, s.running, s.kv_usage) == (3, 8, 0.93)
    assert parse_vllm_metrics("# nothing\nhttp_requests_total 3\n", 1.0) is None


def test_llamacpp_old_slot_state_field():
    s = parse_llamacpp([{"id": 0, "state": 1}, {"id": 1, "state": 0}], {}, None, 1.0)
    assert s is not None and (s.slots_total, s.slots_busy) == (2, 1)


async def _poll_once(url: str, engine: Engine):
    got = {}
    poller = EnginePoller({"up": EngineProbe(url, engine)}, 1.0,
                          lambda name, signals: got.setdefault(name, signals))
    async with aiohttp.ClientSession() as session:
        await poller.poll_once(session)
    return got.get("up"), poller.probes["up"].detected


@pytest.mark.parametrize("engine", ["vllm", "llamacpp", "ollama"])
async def test_auto_detects_each_mock_engine(mock_llm, engine):
    """Hazard: ``engine: auto`` mistaking one server's format for another's (every server
    answers /props or /metrics of some kind), or giving up on the first 404."""
    mock = await mock_llm(batch_size=3, engine=engine)
    signals, detected = await _poll_once(mock.url, Engine.AUTO)
    assert detected is Engine(engine)
    assert signals is not None and signals.engine is Engine(engine)
    if engine == "llamacpp":
        assert signals.slots_total == 3 and signals.waiting == 0
    if engine == "vllm":
        assert signals.waiting == 0 and signals.kv_usage == 0.0


async def test_vllm_waiting_queue_seen_under_load(mock_llm):
    """Hazard: a poller that reads the format but not the numbers (waiting stays 0)."""
    mock = await mock_llm(batch_size=1, output_tokens=30, tpot_s=0.01)
    async with aiohttp.ClientSession() as session:
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        tasks = [asyncio.create_task(session.post(mock.url + "/v1/chat/completions", json=body))
                 for _ in range(3)]
        await mock.state.wait_until(lambda s: s.in_flight == 3)
        signals, _ = await _poll_once(mock.url, Engine.VLLM)
        for response in await asyncio.gather(*tasks):
            response.release()
    assert signals is not None and signals.waiting == 2 and signals.running == 1


async def test_unreachable_engine_gives_no_signal(unused_tcp_port):
    signals, detected = await _poll_once(f"http://127.0.0.1:{unused_tcp_port}", Engine.AUTO)
    assert signals is None and detected is None
