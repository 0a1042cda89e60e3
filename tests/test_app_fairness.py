"""Fair share through the real proxy: client weights and the per-request wait bound header."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.conftest import one_model_config
from tests.status_wait import wait_for_status

MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


def weighted_config(url: str) -> dict:
    config = one_model_config(url, max_in_flight=1)
    config["clients"] = {
        "light": {"key": "light-key", "weight": 1},
        "heavy": {"key": "heavy-key", "weight": 3},
    }
    return config


async def test_client_weights_share_the_queue(store_kind, mock_llm, make_proxy):
    """Hazard: FIFO by request ignores who is asking; a client of weight 3 gets about three
    quarters of the turns while both are backlogged."""
    mock = await mock_llm(ttft_s=0.005, tpot_s=0, batch_size=8, output_tokens=4)
    proxy = await make_proxy(weighted_config(mock.url))
    order: list[str] = []
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 4}

    async def call(session: aiohttp.ClientSession, name: str, delay: float = 0) -> None:
        headers = {"Authorization": f"Bearer {name}-key", "x-mock-fault": f"delay:{delay}"}
        async with session.post(proxy.url + CHAT, headers=headers, json=body) as response:
            assert response.status == 200, await response.text()
        order.append(name)

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(call(session, "light", delay=0.5))]
        await wait_for_status(proxy, lambda d: d["models"]["m"]["in_flight"] == 1)
        for i in range(16):
            tasks.append(asyncio.create_task(call(session, "light" if i % 2 else "heavy")))
        await wait_for_status(proxy, lambda d: d["queue"]["depth"] == 16)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    first = order[1:9]
    assert 5 <= first.count("heavy") <= 7, order


async def test_max_wait_header_bounds_the_wait(store_kind, mock_llm, make_proxy):
    """A client's own bound (x-llm-throttle-max-wait-ms) ends its wait with a 429 long before
    the queue's 30 s; a malformed bound is a 400, not a 500."""
    mock = await mock_llm(ttft_s=0, tpot_s=0, batch_size=8)
    config = one_model_config(mock.url, max_in_flight=1)
    config["queue"] = {"max_wait_s": 30}
    proxy = await make_proxy(config)
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 1}
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + CHAT, json=body,
                                headers={"x-llm-throttle-max-wait-ms": "soon"}) as bad:
            assert bad.status == 400
            assert (await bad.json())["error"]["param"] == "x-llm-throttle-max-wait-ms"
        holder = asyncio.create_task(session.post(proxy.url + CHAT, json=body,
                                                  headers={"x-mock-fault": "delay:2.0"}))
        await wait_for_status(proxy, lambda d: d["models"]["m"]["in_flight"] == 1)
        started = time.monotonic()
        async with session.post(proxy.url + CHAT, json=body,
                                headers={"x-llm-throttle-max-wait-ms": "300"}) as bounded:
            assert time.monotonic() - started < 1.8
            assert bounded.status == 429
            assert (await bounded.json())["error"]["code"] == "queue_timeout"
            assert int(bounded.headers["retry-after-ms"]) > 0
        async with await holder as done:
            assert done.status == 200
