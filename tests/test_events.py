"""``GET /throttle/events``: a real proxy, real HTTP clients reading (or not reading) the stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from proxy.events import EventHub, slim_state
from tests.conftest import one_model_config

ADMIN = {"Authorization": "Bearer adm"}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The ``data`` of each ``state`` event, as the stream delivers them."""
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield json.loads("\n".join(data))
            data = []


async def _until(events: AsyncIterator[dict[str, Any]], predicate: Any,
                 timeout: float = 10.0) -> dict[str, Any]:
    async def scan() -> dict[str, Any]:
        async for state in events:
            if predicate(state):
                return state
        raise AssertionError("the stream ended")

    return await asyncio.wait_for(scan(), timeout)


def _config(url: str, **extra: Any) -> dict[str, Any]:
    config = one_model_config(url, max_in_flight=1)
    config["admin_key"] = "adm"
    config.update(extra)
    return config


async def test_the_stream_tells_each_change_of_in_flight_and_queue(mock_llm, make_proxy):
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(_config(mock.url))
    async with aiohttp.ClientSession() as session, \
            session.get(proxy.url + "/throttle/events", headers=ADMIN) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        events = _events(stream)
        first = await _until(events, lambda s: True)
        assert first["models"]["m"] == {"queued": 0, "in_flight": 0, "cap": 1,
                                        "saturated": False}
        assert first["queue"] == {"depth": 0}
        calls = [asyncio.create_task(session.post(
            proxy.url + "/v1/chat/completions", json=BODY,
            headers={"x-mock-fault": "delay:1.0", "Authorization": "Bearer x"}))
            for _ in range(2)]
        busy = await _until(events, lambda s: s["models"]["m"]["queued"] == 1)
        assert busy["models"]["m"]["in_flight"] == 1
        for call in calls:
            (await call).close()
        await _until(events, lambda s: s["models"]["m"]["in_flight"] == 0
                     and s["models"]["m"]["queued"] == 0)


async def test_the_stream_needs_the_admin_key(mock_llm, make_proxy):
    mock = await mock_llm()
    proxy = await make_proxy(_config(mock.url))
    async with aiohttp.ClientSession() as session, \
            session.get(proxy.url + "/throttle/events") as response:
        assert response.status == 401
        assert (await response.json())["error"]["type"] == "authentication_error"


async def test_subscribers_are_bounded(mock_llm, make_proxy):
    """One more subscriber than allowed gets an OpenAI-shaped 503, not a stream."""
    mock = await mock_llm()
    proxy = await make_proxy(_config(mock.url, events={"max_subscribers": 2}))
    async with aiohttp.ClientSession() as session:
        a = await session.get(proxy.url + "/throttle/events", headers=ADMIN)
        b = await session.get(proxy.url + "/throttle/events", headers=ADMIN)
        async with session.get(proxy.url + "/throttle/events", headers=ADMIN) as c:
            assert c.status == 503
            error = (await c.json())["error"]
            assert error["code"] == "too_many_subscribers" and "retry-after" in c.headers
        a.close()
        b.close()
    for _ in range(100):  # the server notices the closed streams at its next write
        if not proxy.proxy.events.subscribers:
            break
        await asyncio.sleep(0.05)
    assert not proxy.proxy.events.subscribers


async def test_a_keepalive_comment_when_nothing_changes(mock_llm, make_proxy):
    mock = await mock_llm()
    proxy = await make_proxy(_config(mock.url, events={"keepalive_s": 0.2}))
    async with aiohttp.ClientSession() as session, \
            session.get(proxy.url + "/throttle/events", headers=ADMIN) as stream:
        lines: list[bytes] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                async for raw in stream.content:
                    lines.append(raw)
                    if raw.startswith(b": keep-alive"):
                        break
        assert b": keep-alive\n" in lines


async def test_a_slow_subscriber_neither_grows_memory_nor_blocks_admissions(mock_llm, make_proxy):
    """Hazard: a subscriber that stops reading must not make the proxy buffer every event for
    it (memory growing with time) nor stall the producer or the request path. Here the state
    is made large (~40 KB an event) and changes every 10 ms while a raw socket with a 4 KB
    receive buffer never reads: events published go far past what it holds, requests are
    admitted and answered meanwhile, and what waits for that subscriber stays bounded."""
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(_config(mock.url, events={"poll_s": 0.01}))
    hub: EventHub = proxy.proxy.events
    counter = {"n": 0}
    real = hub.read_state

    async def big_state() -> dict[str, Any]:
        doc = dict(await real())
        counter["n"] += 1
        doc["models"] = {**doc["models"], **{
            f"model-{i:03d}-" + "x" * 100: {"queued": counter["n"], "in_flight": 0, "cap": 1}
            for i in range(300)}}
        return doc

    hub.read_state = big_state  # type: ignore[method-assign]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    host, port = proxy.url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, b"GET /throttle/events HTTP/1.1\r\nHost: x\r\n"
                                  b"Authorization: Bearer adm\r\n\r\n")
    try:
        for _ in range(200):
            if hub.subscribers:
                break
            await asyncio.sleep(0.01)
        assert hub.subscribers
        async with aiohttp.ClientSession() as session:
            for _ in range(20):  # admitted and answered while the subscriber stalls
                async with asyncio.timeout(10), session.post(
                        proxy.url + "/v1/chat/completions", json=BODY,
                        headers={"Authorization": "Bearer x"}) as response:
                    assert response.status == 200
                    await response.read()
                await asyncio.sleep(0.05)
        published = hub.published
        event_size = len(json.dumps(slim_state(await big_state())))
        assert published > 60, published  # ~2.4 MB offered, 4 KB read window
        (sub,) = hub.subscribers
        assert sub.latest is None or len(sub.latest) < 2 * event_size
        conns = [c for c in proxy.server.connections
                 if c.transport.get_write_buffer_size() > 0]
        buffered = sum(c.transport.get_write_buffer_size() for c in conns)
        assert buffered < 1_000_000, buffered  # the high-water mark plus one event, not all
    finally:
        sock.close()


async def test_shutdown_ends_the_streams(mock_llm, make_proxy):
    """An event stream never ends on its own: a graceful stop must end it, not wait out the
    grace period for it."""
    mock = await mock_llm()
    proxy = await make_proxy(_config(mock.url, shutdown_grace_s=30))
    async with aiohttp.ClientSession() as session, \
            session.get(proxy.url + "/throttle/events", headers=ADMIN) as stream:
        await _until(_events(stream), lambda s: True)
        async with asyncio.timeout(10):
            await proxy.proxy.stop()
            rest = await stream.content.read()
        assert b"data:" not in rest or rest.endswith(b"\n\n")
