"""Queued streaming clients kept alive (``proxy/keepalive.py``): a 200 event stream of SSE
comments while queued, then the upstream's stream or the SSE error event; nothing leaked."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
import openai
import pytest

from tests.conftest import one_model_config
from tests.status_wait import wait_for_status

MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
KEEPALIVE = {"x-llm-throttle-queue-keepalive": "1"}


def keepalive_config(url: str, *, after_s: float = 0.5, interval_s: float = 0.5,
                     max_wait_s: float = 60, client_opt_in: bool = False) -> dict:
    config = one_model_config(url, max_in_flight=1)
    config["queue"] = {"max_wait_s": max_wait_s, "keepalive_after_s": after_s,
                       "keepalive_interval_s": interval_s}
    config["clients"] = {"c": {"key": "client-key", "queue_keepalive": client_opt_in}}
    return config


async def hold_the_slot(session: aiohttp.ClientSession, proxy, seconds: float) -> None:
    """One non-streamed request that keeps the model's only permit for ``seconds``."""
    headers = {"Authorization": "Bearer client-key", "x-mock-fault": f"delay:{seconds}"}
    async with session.post(proxy.url + CHAT, headers=headers,
                            json={"model": "m", "messages": MESSAGES, "max_tokens": 1}) as r:
        assert r.status == 200, await r.text()


async def streamed_text(client, headers: dict) -> str:
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=4, stream=True, extra_headers=headers)
    parts = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts)


async def _survives(store_kind, mock_llm, make_proxy, openai_client, *, wait_s: float,
                    read_timeout_s: float, client_opt_in: bool) -> None:
    mock = await mock_llm(ttft_s=0, tpot_s=0, batch_size=8, output_tokens=4)
    proxy = await make_proxy(keepalive_config(mock.url, after_s=read_timeout_s / 3,
                                              interval_s=read_timeout_s / 3,
                                              client_opt_in=client_opt_in))
    client = openai_client(proxy.url, timeout=httpx.Timeout(read_timeout_s, connect=5.0))
    async with aiohttp.ClientSession() as session:
        blocker = asyncio.create_task(hold_the_slot(session, proxy, wait_s))
        await wait_for_status(proxy, lambda d: d["models"]["m"]["in_flight"] == 1)
        text = await asyncio.wait_for(
            streamed_text(client, {} if client_opt_in else KEEPALIVE), wait_s + 30)
        await blocker
    assert text, "the upstream's stream was not relayed after the wait"


async def test_kept_alive_stream_outlives_the_sdk_read_timeout(
        store_kind, mock_llm, make_proxy, openai_client):
    """Hazard: a queued stream sends nothing until admitted, so an SDK with a 3 s read
    timeout gives up on an 8 s wait; kept alive (header opt-in) it gets its answer."""
    await _survives(store_kind, mock_llm, make_proxy, openai_client, wait_s=8,
                    read_timeout_s=3, client_opt_in=False)


async def test_client_config_opts_in(store_kind, mock_llm, make_proxy, openai_client):
    """``clients.<name>.queue_keepalive: true`` keeps the client's streams alive with no
    header (an SDK that cannot add headers)."""
    await _survives(store_kind, mock_llm, make_proxy, openai_client, wait_s=6,
                    read_timeout_s=3, client_opt_in=True)


@pytest.mark.slow
async def test_kept_alive_thirty_second_timeout_sixty_second_wait(
        store_kind, mock_llm, make_proxy, openai_client):
    """The issue's full size: a 30 s read timeout survives a 60 s queue wait."""
    await _survives(store_kind, mock_llm, make_proxy, openai_client, wait_s=60,
                    read_timeout_s=30, client_opt_in=False)


async def test_refused_while_kept_alive_ends_with_sse_error(
        store_kind, mock_llm, make_proxy, openai_client):
    """Hazard: once the 200 head is sent a queue timeout can no longer be a 429; it must be
    the OpenAI-shaped SSE error event (the SDK raises it), not a silent or cut stream."""
    mock = await mock_llm(ttft_s=0, tpot_s=0, batch_size=8, output_tokens=4)
    proxy = await make_proxy(keepalive_config(mock.url, max_wait_s=2.5))
    client = openai_client(proxy.url, timeout=httpx.Timeout(10.0, connect=5.0))
    async with aiohttp.ClientSession() as session:
        blocker = asyncio.create_task(hold_the_slot(session, proxy, 5))
        await wait_for_status(proxy, lambda d: d["models"]["m"]["in_flight"] == 1)
        with pytest.raises(openai.APIError) as caught:
            await asyncio.wait_for(streamed_text(client, KEEPALIVE), 30)
        await blocker
    assert "queue" in str(caught.value).lower(), caught.value
    assert proxy.proxy.rates.rejected["m"].rate() > 0


async def test_comments_then_upstream_error_event(store_kind, mock_llm, make_proxy):
    """The wire: 200 text/event-stream, ``: queued ...`` comment lines while waiting, and an
    upstream 503 after admission told as an SSE error event (its status can't be sent)."""
    mock = await mock_llm(ttft_s=0, tpot_s=0, batch_size=8, output_tokens=4)
    proxy = await make_proxy(keepalive_config(mock.url, after_s=0.3, interval_s=0.3))
    headers = {"Authorization": "Bearer client-key", "x-mock-fault": "unavailable-503",
               **KEEPALIVE}
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 4, "stream": True}
    async with aiohttp.ClientSession() as session:
        blocker = asyncio.create_task(hold_the_slot(session, proxy, 2))
        await wait_for_status(proxy, lambda d: d["models"]["m"]["in_flight"] == 1)
        async with session.post(proxy.url + CHAT, headers=headers, json=body) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            text = (await asyncio.wait_for(response.read(), 30)).decode()
        await blocker
    assert text.startswith(": queued "), text
    assert ", position 1" in text, text
    assert text.rstrip().endswith("}"), text
    assert '"upstream_error"' in text and "503" in text, text


async def test_client_leaving_while_kept_alive_frees_its_queue_slot(
        store_kind, mock_llm, make_proxy):
    """Hazard: a client that hangs up after the keep-alive head must not stay queued (nor
    hold a permit once admitted): its slot is freed while the blocker still runs."""
    mock = await mock_llm(ttft_s=0, tpot_s=0, batch_size=8, output_tokens=4)
    proxy = await make_proxy(keepalive_config(mock.url, after_s=0.2, interval_s=0.2))
    headers = {"Authorization": "Bearer client-key", **KEEPALIVE}
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 4, "stream": True}
    async with aiohttp.ClientSession() as session:
        blocker = asyncio.create_task(hold_the_slot(session, proxy, 4))
        await wait_for_status(proxy, lambda d: d["models"]["m"]["in_flight"] == 1)
        async with aiohttp.ClientSession() as leaver:
            response = await leaver.post(proxy.url + CHAT, headers=headers, json=body)
            assert response.status == 200
            first = await asyncio.wait_for(response.content.readline(), 10)
            assert first.startswith(b": queued"), first
            assert (await proxy.proxy.status_json())["queue"]["depth"] == 1
            response.close()
        await wait_for_status(proxy, lambda d: d["queue"]["depth"] == 0
                              and d["models"]["m"]["in_flight"] == 1)
        await blocker


def test_header_overrides_the_client_setting():
    """The request's header wins both ways; an unknown value falls back to the client's
    setting rather than guessing."""
    from proxy.keepalive import comment_line, wants_keepalive

    assert wants_keepalive({KEEPALIVE_NAME: "1"}, False)
    assert not wants_keepalive({KEEPALIVE_NAME: "0"}, True)
    assert wants_keepalive({KEEPALIVE_NAME: "maybe"}, True)
    assert not wants_keepalive({}, False)
    assert comment_line(10.2, 12, 7.6) == b": queued 10 s, position 12, about 8 s\n\n"
    assert comment_line(3, 1, None) == b": queued 3 s, position 1\n\n"


KEEPALIVE_NAME = "x-llm-throttle-queue-keepalive"


async def test_shutdown_while_kept_alive_ends_with_sse_error(store_kind, request, mock_llm):
    """Hazard: a graceful stop answers queued requests 503, which a kept-alive stream can no
    longer send: it must end with the ``shutting_down`` SSE error event, while the admitted
    request still finishes."""
    from proxy.config import parse_config
    from proxy.runner import start_proxy

    mock = await mock_llm(ttft_s=0, tpot_s=0, batch_size=8, output_tokens=4)
    config = keepalive_config(mock.url, after_s=0.2, interval_s=0.2)
    config["store"] = "memory" if store_kind == "memory" else \
        request.getfixturevalue("redis_store_url")
    config["shutdown_grace_s"] = 20
    running = await start_proxy(parse_config(config, environ={}), port=0)
    headers = {"Authorization": "Bearer client-key", **KEEPALIVE}
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 4, "stream": True}
    try:
        async with aiohttp.ClientSession() as session:
            blocker = asyncio.create_task(hold_the_slot(session, running, 3))
            await wait_for_status(running, lambda d: d["models"]["m"]["in_flight"] == 1)
            async with session.post(running.url + CHAT, headers=headers, json=body) as response:
                assert response.status == 200
                first = await asyncio.wait_for(response.content.readline(), 10)
                assert first.startswith(b": queued"), first
                closing = asyncio.create_task(running.close())
                rest = (await asyncio.wait_for(response.read(), 30)).decode()
            await blocker
            await asyncio.wait_for(closing, 30)
    finally:
        if not running.proxy.draining:
            await running.close()
    assert '"shutting_down"' in rest and rest.rstrip().endswith("}"), rest
