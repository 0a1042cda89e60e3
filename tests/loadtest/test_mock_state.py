"""The simulated GPU: per-model counting and the slowdown past the batch size."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from openai import AsyncOpenAI

from tests.loadtest.mock_support import MSG, MockFactory


async def test_peak_counting_per_model(make_mock: MockFactory) -> None:
    mock = await make_mock(ttft_s=0.1)
    sdk = AsyncOpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)
    try:
        await asyncio.gather(
            *(sdk.chat.completions.create(model="a" if i < 4 else "b", messages=MSG, max_tokens=1)
              for i in range(6))
        )
    finally:
        await sdk.close()
    s = mock.state
    assert (s.in_flight, s.peak, s.completed) == (0, 6, 6)
    assert s.peak_by_model == {"a": 4, "b": 2} and s.in_flight_by_model == {}
    assert s.requests_by_path["/v1/chat/completions"] == 6
    s.reset()
    assert (s.peak, s.completed, s.peak_by_model) == (0, 0, {})


async def test_overload_thrashes(make_mock: MockFactory) -> None:
    """Past the batch size every request slows down super-linearly (goodput drops)."""
    mock = await make_mock(batch_size=2, tpot_s=0.01, output_tokens=6, thrash=0.5)
    sdk = AsyncOpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)

    async def one() -> float:
        t0 = time.perf_counter()
        await sdk.chat.completions.create(model="m", messages=MSG)
        return time.perf_counter() - t0

    try:
        at_batch = await asyncio.gather(*(one() for _ in range(2)))
        overloaded = await asyncio.gather(*(one() for _ in range(8)))
    finally:
        await sdk.close()
    # 4x the batch: factor 4 * (1 + 0.5 * 3) = 10; leave room for scheduling noise.
    assert sum(overloaded) / 8 > 4 * (sum(at_batch) / 2)


async def _first_token_s(sdk: AsyncOpenAI, t0: float) -> float:
    stream = await sdk.chat.completions.create(model="m", messages=MSG, stream=True,
                                               max_tokens=2)
    first = None
    async for _ in stream:
        if first is None:
            first = time.perf_counter() - t0
    assert first is not None
    return first


async def test_requests_over_max_running_wait_in_the_engine_queue(
        make_mock: MockFactory) -> None:
    """A real engine (vLLM max_num_seqs, llama.cpp slots) runs at most its limit at once; the
    rest wait FIFO before their first token and show as waiting. Hazard: the mock only slowed
    down past the batch, so TTFT and num_requests_waiting never saw the engine's queue."""
    mock = await make_mock(batch_size=2, max_running=2, ttft_s=0.3, tpot_s=0.01)
    sdk = AsyncOpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)
    s = mock.state
    try:
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(_first_token_s(sdk, t0)) for _ in range(6)]
        await s.wait_until(lambda st: st.in_flight == 6 and st.waiting == 4, timeout=10)
        assert (s.running, s.running_now, s.slowdown()) == (2, 2, 1.0)
        async with aiohttp.ClientSession() as http, http.get(mock.url + "/metrics") as r:
            text = await r.text()
        assert 'vllm:num_requests_waiting{model_name="mock-model"} 4.0' in text
        assert 'vllm:num_requests_running{model_name="mock-model"} 2.0' in text
        s.config.engine = "llamacpp"
        async with aiohttp.ClientSession() as http:
            async with http.get(mock.url + "/metrics") as r:
                assert "llamacpp:requests_deferred 4" in await r.text()
            async with http.get(mock.url + "/slots") as r:
                slots = await r.json()
        assert [x["is_processing"] for x in slots] == [True, True]
        firsts = sorted(await asyncio.gather(*tasks))
    finally:
        await sdk.close()
    # three waves of two: the last wave's first token comes at least one wave after the first
    assert firsts[-1] - firsts[0] > 0.3
    assert (s.in_flight, s.running, s.waiting, s.completed) == (0, 0, 0, 6)


async def test_a_client_leaving_the_engine_queue_frees_nothing_it_did_not_hold(
        make_mock: MockFactory) -> None:
    """A queued request whose client leaves must neither take a slot nor leak one. Hazard:
    a cancelled waiter granted a slot as it left would hold it for good (hung engine)."""
    mock = await make_mock(batch_size=1, max_running=1, ttft_s=0.3, tpot_s=0.01)
    sdk = AsyncOpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)
    s = mock.state
    try:
        t0 = time.perf_counter()
        holder = asyncio.create_task(_first_token_s(sdk, t0))
        leaver = asyncio.create_task(_first_token_s(sdk, t0))
        await s.wait_until(lambda st: st.waiting == 1, timeout=10)
        leaver.cancel()
        await asyncio.gather(leaver, return_exceptions=True)
        await s.wait_until(lambda st: st.in_flight == 1 and st.waiting == 0, timeout=10)
        await holder
        await s.wait_until(lambda st: st.in_flight == 0, timeout=10)
        assert s.running == 0
        assert await _first_token_s(sdk, time.perf_counter()) < 5
    finally:
        await sdk.close()
    assert (s.in_flight, s.running, s.waiting) == (0, 0, 0)
    assert s.cancelled == 1 and s.completed == 2


async def test_without_max_running_every_request_runs_at_once(make_mock: MockFactory) -> None:
    """The default keeps the old model: no engine queue, waiting = active past the batch."""
    mock = await make_mock(batch_size=2, ttft_s=0.3, tpot_s=0.01)
    sdk = AsyncOpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)
    s = mock.state
    try:
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(_first_token_s(sdk, t0)) for _ in range(4)]
        await s.wait_until(lambda st: st.in_flight == 4, timeout=10)
        assert (s.running, s.waiting, s.running_now) == (0, 2, 2) and s.slowdown() > 1
        await asyncio.gather(*tasks)
    finally:
        await sdk.close()
