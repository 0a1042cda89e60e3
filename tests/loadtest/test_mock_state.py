"""The simulated GPU: per-model counting and the slowdown past the batch size."""

from __future__ import annotations

import asyncio
import time

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
