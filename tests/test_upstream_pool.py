"""Reusing pooled upstream connections safely (issue 10, section 2).

A reused connection that the upstream closes after the request went out may or may not have
had the request read: a POST there may already be generating, so it is not sent again; an
idempotent GET is. Idle connections expire before common upstream keep-alive timeouts.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.conftest import one_model_config
from tests.raw_upstream import Seen, answer, per_request, post, sends, split_head

CHAT = "/v1/chat/completions"


async def close_unanswered(seen: Seen, writer: asyncio.StreamWriter) -> None:
    """Read the request, then close without a byte of answer (a crash, a keep-alive race)."""
    writer.close()


async def test_post_on_a_reused_connection_closed_unanswered_is_not_sent_twice(
        raw_upstream, make_proxy):
    """Hazard: the proxy retried any request whose reused connection closed before the
    answer, so a POST the upstream had already read ran twice on the GPU."""
    upstream = await raw_upstream(per_request(
        sends(answer(200, b"{}")), close_unanswered, sends(answer(200, b"{}"))))
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    assert (await post(proxy.url + CHAT))[0] == 200
    status, _, body = await post(proxy.url + CHAT)
    assert status == 502
    error = json.loads(body)["error"]
    assert "not sent again" in error["message"]
    assert [seen.method for seen in upstream.seen] == ["POST", "POST"]


async def test_get_on_a_reused_connection_closed_unanswered_is_retried(raw_upstream,
                                                                       make_proxy):
    """Kept: an idempotent request whose reused connection closed unanswered is sent again
    on a fresh connection, so a keep-alive race never reaches the client."""
    upstream = await raw_upstream(per_request(
        sends(answer(200, b"a")), close_unanswered, sends(answer(200, b"b"))))
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    async with aiohttp.ClientSession() as session:
        for expected in (b"a", b"b"):
            async with session.get(proxy.url + "/version") as response:
                assert (response.status, await response.read()) == (200, expected)
    assert [seen.conn for seen in upstream.seen] == [0, 0, 1]


async def test_idle_pooled_connections_expire(raw_upstream, make_proxy):
    """Hazard: idle pooled connections were kept forever, so the upstream's own keep-alive
    timeout (uvicorn, llama-server: 5 s) closed them, racing the next request on them."""
    upstream = await raw_upstream(sends(answer(200, b"{}")))
    config = one_model_config(upstream.url, max_in_flight=1)
    config["upstreams"]["up"]["idle_timeout_s"] = 0.3
    proxy = await make_proxy(config)
    pool = proxy.proxy.forwarder.pool("up")
    assert (await post(proxy.url + CHAT))[0] == 200
    assert pool.idle_count == 1
    for _ in range(100):  # the sweep closes it soon after 0.3 s
        if pool.idle_count == 0:
            break
        await asyncio.sleep(0.05)
    assert pool.idle_count == 0
    assert (await post(proxy.url + CHAT))[0] == 200
    assert [seen.conn for seen in upstream.seen] == [0, 1]


async def test_idle_timeout_default_is_below_common_keepalive_timeouts():
    """The default must stay under uvicorn's and llama-server's 5 s keep-alive."""
    from proxy.config import parse_config

    config = parse_config(one_model_config("http://127.0.0.1:1"), environ={})
    assert 0 < config.upstreams["up"].idle_timeout_s < 5


async def test_connection_paused_for_a_slow_client_at_the_end_is_reusable(raw_upstream):
    """Hazard: a stream whose last bytes found the client's buffer full paused reading, and
    the connection went back to the pool still paused: the next request on it heard nothing
    until the read timeout."""
    from proxy.config import UpstreamConfig
    from proxy.upstream import UpstreamPool

    chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    head, body = split_head(chunked)  # the body (and its end) while the relay is pumping
    upstream = await raw_upstream(per_request(sends(head, body, pause_s=0.1),
                                              sends(answer(200, b"next"))))
    pool = UpstreamPool(UpstreamConfig(name="up", url=upstream.url, read_timeout_s=2.0),
                        asyncio.get_running_loop())
    try:
        response = await pool.request("GET", "/", b"", None)
        got: list[bytes] = []

        def full_client(data: bytes, end: bool) -> bool:
            got.append(data)
            return False  # the client's buffer is full after every write

        async def drained() -> None:
            return None

        await response.pump(full_client, drained)
        response.close()
        assert b"".join(got) == b"hello"
        assert pool.idle_count == 1
        response = await asyncio.wait_for(pool.request("GET", "/", b"", None), 5)
        assert await asyncio.wait_for(response.read(), 5) == b"next"
        response.close()
        assert [seen.conn for seen in upstream.seen] == [0, 0]
    finally:
        pool.close()
