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
from tests.raw_upstream import (
    CHAT_BODY,
    Script,
    Seen,
    answer,
    per_request,
    post,
    sends,
    split_head,
)

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


def llama_stream(close_after_s: float | None) -> Script:
    """What llama-server (cpp-httplib 0.58) does on a streamed answer: it announces
    keep-alive, sends the SSE stream chunked and its terminator, then closes the connection
    (``close_after_s`` later; None: keeps it) without reading what came meanwhile. A JSON
    answer (``"stream": false``) keeps the connection, as llama-server does."""
    events = (b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n',
              b"data: [DONE]\n\n")
    head = (b"HTTP/1.1 200 OK\r\nServer: llama.cpp\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nKeep-Alive: timeout=5, max=100\r\n\r\n")
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"

    async def script(seen: Seen, writer: asyncio.StreamWriter) -> None:
        if not json.loads(seen.body).get("stream"):
            writer.write(answer(200, b'{"choices":[]}', "Keep-Alive: timeout=5, max=100"))
            return
        writer.write(head)
        await writer.drain()
        writer.write(chunked)
        await writer.drain()
        if close_after_s is not None:
            await asyncio.sleep(close_after_s)
            writer.close()

    return script


async def stream_chat(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    body = {**CHAT_BODY, "stream": True}
    async with session.post(url + CHAT, json=body,
                            timeout=aiohttp.ClientTimeout(total=15)) as response:
        return response.status, await response.read()


async def test_post_never_races_an_upstream_that_closes_after_each_stream(raw_upstream,
                                                                          make_proxy):
    """Hazard (llama-server under closed-loop streams, issue 13): the upstream announces
    keep-alive but closes each connection right after a stream's last chunk; the proxy pooled
    it, the next POST went out on it before the close arrived, found it closed unanswered,
    and the client got a 502 (a POST is never sent twice). Once seen, that upstream's
    connections are not pooled after a stream; its JSON answers still are."""
    upstream = await raw_upstream(llama_stream(close_after_s=0.3))
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    pool = proxy.proxy.forwarder.pool("up")
    async with aiohttp.ClientSession() as session:
        status, body = await stream_chat(session, proxy.url)
        assert status == 200 and body.endswith(b"data: [DONE]\n\n")
        for _ in range(100):  # the upstream closes its first connection 0.3 s later
            if upstream.connections == 1 and pool.idle_count == 0:
                break
            await asyncio.sleep(0.02)
        # back to back, well inside the 0.3 s before the upstream closes each connection
        results = [await stream_chat(session, proxy.url) for _ in range(3)]
        assert [status for status, _ in results] == [200, 200, 200], results
        assert [seen.conn for seen in upstream.seen] == [0, 1, 2, 3]
        # a JSON answer is still pooled: two of them share one connection
        for _ in range(2):
            status, _, _ = await post(proxy.url + CHAT, {**CHAT_BODY, "stream": False})
            assert status == 200
        assert [seen.conn for seen in upstream.seen][-2:] == [4, 4]
    from proxy.upstream_framing import Framing

    assert pool.reuse.marked == {Framing.CHUNKED}


async def test_an_upstream_seen_closing_once_is_pooled_again_after_a_probe(raw_upstream,
                                                                           make_proxy):
    """Hazard: one close right after a stream (an upstream restarted, say) would stop the
    pooling of streams for good: every later stream paid a new connection. A probe (a
    connection held out of use for a while, never raced) brings the pooling back."""
    from proxy.upstream_reuse import PROBE_EVERY

    upstream = await raw_upstream(per_request(llama_stream(close_after_s=0.0),
                                              llama_stream(close_after_s=None)))
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    pool = proxy.proxy.forwarder.pool("up")
    async with aiohttp.ClientSession() as session:
        assert (await stream_chat(session, proxy.url))[0] == 200
        for _ in range(100):
            if pool.reuse.marked:
                break
            await asyncio.sleep(0.02)
        assert pool.reuse.marked
        for _ in range(PROBE_EVERY):
            assert (await stream_chat(session, proxy.url))[0] == 200
        for _ in range(200):  # the probe ends at the first sweep 1 s after its exchange
            if not pool.reuse.marked:
                break
            await asyncio.sleep(0.05)
        assert not pool.reuse.marked
        assert pool.idle_count == 1
        before = upstream.connections
        for _ in range(3):
            assert (await stream_chat(session, proxy.url))[0] == 200
        assert upstream.connections == before  # all three on the probed connection
