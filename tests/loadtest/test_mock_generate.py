"""Chat and text completions, plain and streamed, as the real ``openai`` SDK parses them."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI

from loadtest.mock_llm import MockLLM
from tests.loadtest.mock_support import MSG, MockFactory


async def test_chat_plain(client: AsyncOpenAI, mock: MockLLM) -> None:
    resp = await client.chat.completions.create(model="any-model", messages=MSG, max_tokens=5)
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "any-model"
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (10, 5)
    assert resp.usage.total_tokens == 15

    resp = await client.chat.completions.create(model="m", messages=MSG)
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens == mock.config.output_tokens


async def test_chat_stream_without_usage(client: AsyncOpenAI, mock: MockLLM) -> None:
    stream = await client.chat.completions.create(
        model="m", messages=MSG, max_tokens=4, stream=True
    )
    chunks = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" and c.model == "m" for c in chunks)
    tokens = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(tokens) == 4
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)
    assert mock.state.in_flight == 0


async def test_chat_stream_with_usage(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m",
        messages=MSG,
        max_completion_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (10, 3)
    assert chunks[-2].choices[0].finish_reason == "length"


async def test_completions_plain_and_stream(client: AsyncOpenAI) -> None:
    resp = await client.completions.create(model="m", prompt="abcdefgh", max_tokens=3)
    assert resp.object == "text_completion" and resp.id.startswith("cmpl-")
    assert resp.choices[0].text and resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.prompt_tokens == 2

    stream = await client.completions.create(
        model="m", prompt="hi", max_tokens=2, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert [c.choices[0].text for c in chunks[:2]] == ["Hello", " from"]
    assert chunks[2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


async def test_bad_requests_are_openai_shaped(mock: MockLLM) -> None:
    async with aiohttp.ClientSession(mock.url) as http:
        for payload in (b"{not json", b'{"messages": []}', b"[1]"):
            async with http.post("/v1/chat/completions", data=payload) as r:
                assert r.status == 400
                err = (await r.json())["error"]
                assert set(err) >= {"message", "type", "code"}
    assert mock.state.in_flight == 0 and mock.state.started == 0


async def test_in_flight_released_before_end_is_visible(make_mock: MockFactory) -> None:
    """A client that saw the end of a response must never see it still counted."""
    mock = await make_mock(tpot_s=0.001)
    async with aiohttp.ClientSession(mock.url) as http:
        for stream in (False, True):
            for _ in range(5):
                body = {"model": "m", "messages": MSG, "max_tokens": 3, "stream": stream}
                async with http.post("/v1/chat/completions", json=body) as r:
                    if stream:
                        async for line in r.content:
                            if line.startswith(b"data: [DONE]"):
                                break
                    else:
                        await r.read()
                    assert mock.state.in_flight == 0


async def test_zero_delay_never_sleeps(
    mock: MockLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []
    real_sleep = asyncio.sleep

    async def counting_sleep(delay: float, *args: Any) -> Any:
        calls.append(delay)
        return await real_sleep(delay, *args)

    monkeypatch.setattr(asyncio, "sleep", counting_sleep)
    async with aiohttp.ClientSession(mock.url) as http:
        for stream in (False, True):
            body = {"model": "m", "messages": MSG, "stream": stream}
            async with http.post("/v1/chat/completions", json=body) as r:
                assert r.status == 200
                await r.read()
    assert calls == []
