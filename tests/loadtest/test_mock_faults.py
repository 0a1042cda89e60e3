"""Fault injection through the x-mock-* headers."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import httpx
import openai
import pytest
from openai import AsyncOpenAI

from loadtest.mock_llm import MockLLM
from tests.loadtest.mock_support import MSG, MockFactory


async def test_refusals(client: AsyncOpenAI, mock: MockLLM) -> None:
    with pytest.raises(openai.RateLimitError) as exc:
        await client.chat.completions.create(
            model="m", messages=MSG, extra_headers={"x-mock-fault": "refuse-429"}
        )
    assert exc.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.InternalServerError) as exc5:
        await client.chat.completions.create(
            model="m", messages=MSG, extra_headers={"x-mock-fault": "unavailable-503"}
        )
    assert exc5.value.status_code == 503
    assert mock.state.started == 0


async def test_delay_tokens_and_pause(client: AsyncOpenAI) -> None:
    t0 = time.perf_counter()
    resp = await client.chat.completions.create(
        model="m", messages=MSG, extra_headers={"x-mock-fault": "delay:0.2,tokens:3"}
    )
    assert time.perf_counter() - t0 >= 0.2
    assert resp.usage is not None and resp.usage.completion_tokens == 3

    stream = await client.chat.completions.create(
        model="m", messages=MSG, max_tokens=3, stream=True,
        extra_headers={"x-mock-pause-after-first": "0.3"},
    )
    stamps = [time.perf_counter() async for _ in stream]
    assert stamps[1] - stamps[0] >= 0.25  # the first chunk arrived before the pause


async def test_die_mid_stream(client: AsyncOpenAI, mock: MockLLM) -> None:
    stream = await client.chat.completions.create(
        model="m", messages=MSG, stream=True, extra_headers={"x-mock-fault": "die-mid-stream"}
    )
    seen = 0
    with pytest.raises(httpx.RemoteProtocolError):  # the body ends without its terminator
        async for _ in stream:
            seen += 1
    assert seen == 3
    assert (mock.state.in_flight, mock.state.failed) == (0, 1)


async def test_hang_and_disconnect_free_in_flight(make_mock: MockFactory) -> None:
    mock = await make_mock(tpot_s=0.05, output_tokens=1000)
    async with aiohttp.ClientSession(mock.url) as http:
        hung = asyncio.create_task(
            http.post("/v1/chat/completions", json={"model": "m", "messages": MSG},
                      headers={"x-mock-fault": "hang"})
        )
        async with http.post(
            "/v1/chat/completions", json={"model": "m", "messages": MSG, "stream": True}
        ) as r:
            await r.content.readline()  # first chunk is out: generation is under way
            assert mock.state.in_flight == 2
        await mock.state.wait_until(lambda s: s.in_flight == 1, timeout=2)
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
    await mock.state.wait_until(lambda s: s.in_flight == 0, timeout=2)
    assert mock.state.cancelled == 2


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
async def test_every_route_refuses_429_the_same_way(mock: MockLLM, path: str) -> None:
    """Hazard: the embeddings 429 sent ``retry-after`` but not ``retry-after-ms`` while chat
    sent both, so a proxy or client honouring the exact wait saw a different answer per
    route; every route's 429 now comes from one helper."""
    body = {"model": "m", "messages": MSG, "prompt": "hi", "input": "hi"}
    async with aiohttp.ClientSession() as session:
        refused = await session.post(mock.url + path, json=body,
                                     headers={"x-mock-fault": "refuse-429:2.5"})
        doc = await refused.json()
        down = await session.post(mock.url + path, json=body,
                                  headers={"x-mock-fault": "unavailable-503"})
        await down.read()
    assert refused.status == 429
    assert refused.headers["retry-after"] == "3"
    assert refused.headers["retry-after-ms"] == "2500"
    assert doc["error"]["type"] == "rate_limit_error"
    assert doc["error"]["code"] == "rate_limit_exceeded"
    assert down.status == 503
    assert mock.state.started == 0


@pytest.mark.parametrize(("header", "code"), [
    ({"x-mock-fault": "delay:soon"}, "bad_fault"),
    ({"x-mock-pause-after-first": "later"}, "bad_fault"),
    ({"x-mock-fault": "explode"}, "unknown_fault"),
])
@pytest.mark.parametrize("route", ["chat", "embeddings"])
async def test_a_malformed_fault_header_is_a_400_on_every_route(
        client: AsyncOpenAI, mock: MockLLM, header: dict[str, str], code: str,
        route: str) -> None:
    """Hazard: the fault header is read by one helper for both routes; a number that does not
    parse must stay an OpenAI-shaped 400, never a 500, on each of them."""
    with pytest.raises(openai.BadRequestError) as exc:
        if route == "chat":
            await client.chat.completions.create(model="m", messages=MSG, extra_headers=header)
        else:
            await client.embeddings.create(model="m", input="hi", extra_headers=header)
    assert exc.value.code == code
    assert mock.state.started == 0
