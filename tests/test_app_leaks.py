"""Nothing leaks: clients that leave free their queue slot and permit at once."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.conftest import one_model_config
from tests.status_wait import wait_for_status

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def test_client_leaving_the_queue_frees_its_place_at_once(store_kind, mock_llm, make_proxy):
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(one_model_config(mock.url, max_in_flight=1))
    async with aiohttp.ClientSession() as session:
        holder = asyncio.create_task(session.post(
            proxy.url + "/v1/chat/completions", json=BODY, headers={"x-mock-fault": "delay:1"}))
        await wait_for_status(proxy, lambda d: d["models"]["m"]["in_flight"] == 1)
        async with aiohttp.ClientSession() as leaving:
            waiter = asyncio.create_task(leaving.post(proxy.url + "/v1/chat/completions",
                                                      json=BODY))
            await wait_for_status(proxy, lambda d: d["queue"]["depth"] == 1)
            waiter.cancel()
        left_at = time.monotonic()
        await wait_for_status(proxy, lambda d: d["queue"]["depth"] == 0, timeout=1.0)
        assert time.monotonic() - left_at < 0.5
        async with await holder as response:
            assert response.status == 200
    assert mock.state.started == 1  # the one that left never reached the upstream


async def test_client_leaving_mid_stream_closes_upstream_and_frees_permit(
        store_kind, mock_llm, make_proxy):
    mock = await mock_llm(ttft_s=0, tpot_s=0.05, output_tokens=200)
    proxy = await make_proxy(one_model_config(mock.url, max_in_flight=1))
    async with aiohttp.ClientSession() as session:
        response = await session.post(proxy.url + "/v1/chat/completions",
                                      json={**BODY, "stream": True, "max_tokens": 200})
        await response.content.readline()
        assert mock.state.in_flight == 1
        response.close()  # the client goes away mid-stream
    left_at = time.monotonic()
    await mock.state.wait_until(lambda s: s.in_flight == 0, timeout=1.0)
    await wait_for_status(proxy, lambda d: d["models"]["m"]["in_flight"] == 0, timeout=1.0)
    assert time.monotonic() - left_at < 1.0
    assert mock.state.cancelled == 1


async def test_many_clients_leaving_at_random_points(store_kind, mock_llm, make_proxy):
    mock = await mock_llm(ttft_s=0.02, tpot_s=0.01, output_tokens=20)
    proxy = await make_proxy(one_model_config(mock.url, max_in_flight=3))

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        task = asyncio.create_task(session.post(proxy.url + "/v1/chat/completions",
                                                json={**BODY, "stream": i % 2 == 0}))
        await asyncio.sleep(0.01 * (i % 7))
        if i % 3 == 0:
            task.cancel()
        else:
            async with await task as response:
                await response.read()

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*[one(i, session) for i in range(30)], return_exceptions=True)
    await mock.state.wait_until(lambda s: s.in_flight == 0, timeout=2.0)
    assert mock.state.peak <= 3
