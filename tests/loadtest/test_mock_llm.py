"""The mock LLM speaks what the real ``openai`` SDK parses and behaves like a loaded GPU."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import pytest
from openai import AsyncOpenAI

from loadtest.mock_llm import MOCK_STATE, MockLLM, MockLLMConfig, create_app, run_mock_llm

ROOT = Path(__file__).resolve().parents[2]
MSG = [{"role": "user", "content": "x" * 40}]  # 10 prompt tokens

MockFactory = Callable[..., Awaitable[MockLLM]]


@pytest.fixture
async def make_mock() -> AsyncIterator[MockFactory]:
    """Start mocks with config overrides; each is stopped after the test."""
    servers: list[Any] = []

    async def factory(**overrides: Any) -> MockLLM:
        cm = run_mock_llm(MockLLMConfig(**{"ttft_s": 0.0, "tpot_s": 0.0, **overrides}))
        server = await cm.__aenter__()
        servers.append(cm)
        return server

    yield factory
    for cm in reversed(servers):
        await cm.__aexit__(None, None, None)


@pytest.fixture
async def mock(make_mock: MockFactory) -> MockLLM:
    return await make_mock()


@pytest.fixture
async def client(mock: MockLLM) -> AsyncIterator[AsyncOpenAI]:
    sdk = AsyncOpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)
    yield sdk
    await sdk.close()


# -- OpenAI surface ----------------------------------------------------------------------------


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


async def test_embeddings_and_models(client: AsyncOpenAI, mock: MockLLM) -> None:
    # The SDK asks for base64 by default and decodes it; also ask for floats explicitly.
    a = await client.embeddings.create(model="emb", input=["one", "two"])
    b = await client.embeddings.create(model="emb", input="one", encoding_format="float")
    assert [d.index for d in a.data] == [0, 1]
    assert len(a.data[0].embedding) == mock.config.embedding_dim
    assert a.data[0].embedding == pytest.approx(b.data[0].embedding, rel=1e-5)
    assert a.data[0].embedding != a.data[1].embedding
    assert a.usage.prompt_tokens == 2

    models = [m.id async for m in client.models.list()]
    assert models == ["mock-model"]


async def test_probes_and_metrics(make_mock: MockFactory) -> None:
    mock = await make_mock(batch_size=2, ttft_s=0.3, models=["a", "b"])
    async with aiohttp.ClientSession(mock.url) as http:
        for path in ("/api/tags", "/props", "/version", "/health"):
            async with http.get(path) as r:
                assert r.status == 200, path
                data = await r.json()
        async with http.get("/api/tags") as r:
            assert [m["name"] for m in (await r.json())["models"]] == ["a", "b"]
        async with http.get("/props") as r:
            assert (await r.json())["total_slots"] == 2
        assert data == {"status": "ok"}

        body = {"model": "a", "messages": MSG}
        tasks = [asyncio.create_task(http.post("/v1/chat/completions", json=body))
                 for _ in range(3)]
        await mock.state.wait_until(lambda s: s.in_flight == 3)
        async with http.get("/metrics") as r:
            text = await r.text()
        assert 'vllm:num_requests_running{model_name="a"} 2.0' in text
        assert 'vllm:num_requests_waiting{model_name="a"} 1.0' in text
        for t in tasks:
            (await t).release()


async def test_bad_requests_are_openai_shaped(mock: MockLLM) -> None:
    async with aiohttp.ClientSession(mock.url) as http:
        for payload in (b"{not json", b'{"messages": []}', b"[1]"):
            async with http.post("/v1/chat/completions", data=payload) as r:
                assert r.status == 400
                err = (await r.json())["error"]
                assert set(err) >= {"message", "type", "code"}
    assert mock.state.in_flight == 0 and mock.state.started == 0


# -- counting ----------------------------------------------------------------------------------


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


# -- faults ------------------------------------------------------------------------------------


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


# -- introspection and process -----------------------------------------------------------------


async def test_echo_records_headers_and_config(mock: MockLLM) -> None:
    async with aiohttp.ClientSession(mock.url) as http:
        async with http.post(
            "/mock/echo/v1/anything?a=1&a=2", data=b"payload",
            headers={"Authorization": "Bearer upstream"},
        ) as r:
            echo = await r.json()
        async with http.post("/mock/config", json={"output_tokens": 2}) as r:
            assert r.status == 200
        async with http.get("/mock/stats") as r:
            stats = await r.json()
    assert echo["method"] == "POST" and echo["path"] == "/mock/echo/v1/anything"
    assert echo["query"] == {"a": ["1", "2"]} and echo["body"] == "payload"
    assert echo["headers"]["authorization"] == "Bearer upstream"
    assert mock.state.last_request is not None
    assert mock.state.last_request.headers["authorization"] == "Bearer upstream"
    assert stats["recent_requests"][-1]["headers"]["authorization"] == "Bearer upstream"
    assert "/mock/stats" not in stats["requests_by_path"]
    assert mock.config.output_tokens == 2


async def test_create_app_in_test_client(aiohttp_client: Any) -> None:
    app = create_app(MockLLMConfig(ttft_s=0, tpot_s=0, models=["x"]))
    http = await aiohttp_client(app)
    async with http.get("/v1/models") as r:
        assert (await r.json())["data"][0]["id"] == "x"
    assert app[MOCK_STATE].requests_by_path["/v1/models"] == 1


async def test_restart_keeps_port_and_counters(mock: MockLLM) -> None:
    url = mock.url
    await mock.stop()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(url + "/health")
        await mock.start()
        async with http.get(url + "/health") as r:
            assert r.status == 200
    assert mock.url == url and mock.state.requests_by_path["/health"] == 1


def test_cli_subprocess() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtest", "mock-llm", "--port", "0", "--ttft", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("mock-llm listening on http://127.0.0.1:")
        url = line.split()[-1]
        import urllib.request

        with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
            assert b"mock-model" in r.read()
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0
