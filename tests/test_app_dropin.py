"""Drop-in: the official openai SDK gets the same answers through the proxy as direct."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.conftest import one_model_config

MESSAGES = [{"role": "user", "content": "Say hello"}]


async def test_same_results_as_direct_for_every_openai_route(mock_llm, make_proxy, openai_client):
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(one_model_config(mock.url, max_in_flight=4))
    direct, via = openai_client(mock.url), openai_client(proxy.url)

    for client in (direct, via):
        chat = await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5)
        assert chat.choices[0].message.content
        assert chat.usage.completion_tokens == 5
    a = await direct.chat.completions.create(model="m", messages=MESSAGES, max_tokens=7)
    b = await via.chat.completions.create(model="m", messages=MESSAGES, max_tokens=7)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.model_dump() == b.usage.model_dump()

    texts = []
    for client in (direct, via):
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        chunks = [c async for c in stream]
        texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
        # The proxy asked upstream for usage on the client's behalf and hid that chunk again.
        assert all(c.usage is None for c in chunks)
        assert all(c.choices for c in chunks)
    assert texts[0] == texts[1] and texts[0]

    for client in (direct, via):
        stream = await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert chunks[-1].usage is not None and chunks[-1].choices == []

    c1 = await direct.completions.create(model="m", prompt="hello", max_tokens=4)
    c2 = await via.completions.create(model="m", prompt="hello", max_tokens=4)
    assert c1.choices[0].text == c2.choices[0].text

    e1 = await direct.embeddings.create(model="m", input=["a", "b"])
    e2 = await via.embeddings.create(model="m", input=["a", "b"])
    assert [d.embedding for d in e1.data] == [d.embedding for d in e2.data]

    m1 = await direct.models.list()
    m2 = await via.models.list()
    assert {m.id for m in m1.data} <= {m.id for m in m2.data}  # merged: see test_catalog.py


async def test_probe_paths_pass_through_untouched(mock_llm, make_proxy, openai_client):
    """GET probes pass through; a PATCH with a body is admitted (to ``*``: it names no model)
    and still reaches the upstream byte for byte."""
    mock = await mock_llm()
    config = one_model_config(mock.url)
    config["models"]["*"] = {"upstreams": ["up"]}
    proxy = await make_proxy(config)
    async with aiohttp.ClientSession() as session:
        for path in ("/api/tags", "/props", "/version", "/health"):  # /v1/models: merged
            async with session.get(mock.url + path) as direct:
                want = (direct.status, await direct.read())
            async with session.get(proxy.url + path) as via:
                got = (via.status, await via.read())
            assert got == want, path
        async with session.request("PATCH", proxy.url + "/mock/echo/x?a=1&a=2",
                                   data=b"raw bytes") as echo:
            seen = await echo.json()
        assert seen["method"] == "PATCH"
        assert seen["query"] == {"a": ["1", "2"]}
        assert seen["body"] == "raw bytes"


async def test_credentials_and_hop_by_hop_headers(mock_llm, make_proxy, openai_client):
    mock = await mock_llm()
    config = one_model_config(mock.url)
    config["upstreams"]["up"]["api_key"] = "upstream-secret"
    proxy = await make_proxy(config)
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": "Bearer client-secret", "Connection": "keep-alive, x-hop",
                   "x-hop": "1", "Keep-Alive": "timeout=5", "x-custom": "kept",
                   "Proxy-Authorization": "Basic abc"}
        async with session.get(proxy.url + "/mock/echo/h", headers=headers) as response:
            seen = (await response.json())["headers"]
    assert seen["authorization"] == "Bearer upstream-secret"
    assert "client-secret" not in str(seen)
    assert "x-hop" not in seen and "keep-alive" not in seen and "proxy-authorization" not in seen
    assert seen["x-custom"] == "kept"

    client = openai_client(proxy.url, key="client-secret")
    await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1)
    assert mock.state.recent[-1].headers["Authorization"] == "Bearer upstream-secret"


async def test_without_upstream_key_no_authorization_is_forwarded(mock_llm, make_proxy,
                                                                 openai_client):
    mock = await mock_llm()
    proxy = await make_proxy(one_model_config(mock.url))
    await openai_client(proxy.url, key="client-secret").chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=1)
    assert "Authorization" not in mock.state.recent[-1].headers


async def test_stream_is_relayed_chunk_by_chunk(mock_llm, make_proxy, openai_client):
    """The mock sends one chunk, pauses 1 s, sends the rest: the first chunk arrives early."""
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(one_model_config(mock.url))
    client = openai_client(proxy.url, default_headers={"x-mock-pause-after-first": "1.0"})
    start = time.monotonic()
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    first_at = None
    async for chunk in stream:
        if first_at is None:
            first_at = time.monotonic() - start
    total = time.monotonic() - start
    assert first_at is not None and first_at < 0.5
    assert total >= 1.0


async def test_many_streams_at_once_all_complete(mock_llm, make_proxy, openai_client):
    mock = await mock_llm(ttft_s=0.01, tpot_s=0.002, batch_size=4)
    proxy = await make_proxy(one_model_config(mock.url, max_in_flight=4))
    client = openai_client(proxy.url)

    async def one() -> int:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                                      max_tokens=8)
        return len([c async for c in stream])

    counts = await asyncio.gather(*[one() for _ in range(24)])
    assert all(c == 9 for c in counts)  # 8 tokens + the final chunk
    assert mock.state.peak == 4
