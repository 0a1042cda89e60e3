"""The mock's own record of each request's time to first token and its wait for a slot."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from openai import AsyncOpenAI

from tests.loadtest.mock_support import MSG, MockFactory


async def _stream(sdk: AsyncOpenAI, model: str) -> None:
    stream = await sdk.chat.completions.create(model=model, messages=MSG, stream=True,
                                               max_tokens=2)
    async for _ in stream:
        pass


def _histogram(text: str, name: str) -> dict[str, float]:
    """``le`` -> cumulative count of one histogram in Prometheus text."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


async def test_the_engine_records_its_own_ttft_and_slot_wait_per_model(
        make_mock: MockFactory) -> None:
    """Hazard: the benchmark derived the engine's TTFT from the client's less the proxy's queue
    header, so scheduler noise of two event loops read as slot waits. The mock now records,
    per request and by requested model, arrival to first token and the wait for an engine
    slot, and exposes them as vLLM's histograms and exactly on ``/mock/ttft``."""
    mock = await make_mock(batch_size=2, max_running=2, ttft_s=0.2, tpot_s=0.01,
                           output_tokens=2)
    sdk = AsyncOpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)
    try:
        await asyncio.gather(*(_stream(sdk, "ours" if i % 2 else "tenant") for i in range(6)))
        # a plain (non-streamed) request is recorded too
        await sdk.chat.completions.create(model="ours", messages=MSG, max_tokens=2)
    finally:
        await sdk.close()
    samples = list(mock.state.first_tokens.samples)
    assert len(samples) == 7
    for s in samples:
        # the first-token step itself is 0.2 s, after whatever wait for a slot
        assert s.ttft_s >= s.queue_s + 0.19
        assert abs(s.at - time.time()) < 60
    waits = sorted(s.queue_s for s in samples[:6])
    # 6 at once on 2 slots: 2 start at once, 4 wait for at least one 0.21 s service
    assert waits[1] < 0.05 and waits[2] >= 0.15 and waits[5] >= 0.3
    assert samples[6].queue_s < 0.05  # alone on the engine

    summary = mock.state.snapshot()["ttft_s"]
    assert (summary["ours"]["count"], summary["tenant"]["count"], summary["*"]["count"]) \
        == (4, 3, 7)
    assert summary["*"]["waited"] >= 4 and summary["*"]["ttft_p99_s"] >= 0.5

    async with aiohttp.ClientSession() as http:
        async with http.get(mock.url + "/mock/ttft", params={"model": "tenant"}) as r:
            tenant = (await r.json())["samples"]
        async with http.get(mock.url + "/mock/ttft",
                            params={"since": str(samples[6].at - 0.001)}) as r:
            latest = (await r.json())["samples"]
        async with http.get(mock.url + "/mock/ttft", params={"since": "soon"}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "bad_query"
        async with http.get(mock.url + "/metrics") as r:
            text = await r.text()
    assert [s["model"] for s in tenant] == ["tenant"] * 3
    assert [s["model"] for s in latest] == ["ours"]
    ttft = _histogram(text, "vllm:time_to_first_token_seconds")
    queue = _histogram(text, "vllm:request_queue_time_seconds")
    assert ttft["+Inf"] == queue["+Inf"] == 7.0
    assert ttft["0.1"] == 0.0 and ttft["10.0"] == 7.0  # every TTFT over the 0.2 s step
    assert queue["0.1"] <= 3.0  # at most 2 + the lone one found a free slot at once
    counts = list(ttft.values())
    assert counts == sorted(counts)  # cumulative
    assert 'vllm:time_to_first_token_seconds_count{model_name="mock-model"} 7.0' in text

    mock.state.reset()
    assert mock.state.snapshot()["ttft_s"]["*"]["count"] == 0


async def test_without_the_engine_queue_nothing_waits_for_a_slot(
        make_mock: MockFactory) -> None:
    """Past the batch the mock only slows down (no queue): a slot wait there would be a bug
    in the record, not the engine."""
    mock = await make_mock(batch_size=1, ttft_s=0.05, tpot_s=0.01, output_tokens=2)
    sdk = AsyncOpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)
    try:
        await asyncio.gather(*(_stream(sdk, "m") for _ in range(4)))
    finally:
        await sdk.close()
    samples = list(mock.state.first_tokens.samples)
    assert len(samples) == 4
    assert all(s.queue_s < 0.05 and s.ttft_s >= 0.05 for s in samples)
