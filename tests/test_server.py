"""The HTTP/1.1 server (proxy/server.py) on the wire: keep-alive, pipelining, framing, limits."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import aiohttp

from tests.conftest import one_model_config
from tests.raw_client import CHAT, chat_body, json_body, post, read_to_close, status_of


async def test_a_client_that_stops_at_done_keeps_its_connection(mock_llm, make_proxy):
    """The SDKs stop reading at ``data: [DONE]``; the proxy ends its body with that event, so
    the connection is whole and reused even when the upstream's own end comes later."""
    mock = await mock_llm(ttft_s=0.005, tpot_s=0.002)
    proxy = await make_proxy(one_model_config(mock.url))
    ports = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for _ in range(6):
            async with session.post(proxy.url + CHAT.decode(), data=chat_body(stream=True),
                                    headers={"Content-Type": "application/json",
                                             "x-mock-fault": "end-after-done:0.05"}) as resp:
                ports.add(resp.connection.transport.get_extra_info("sockname")[1])
                async for line in resp.content:
                    if line.strip() == b"data: [DONE]":
                        break
    assert len(ports) == 1


async def test_pipelined_requests_are_answered_in_order(mock_llm, make_proxy):
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(one_model_config(mock.url))
    raw = post(chat_body()) + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n" + \
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    response = await read_to_close(proxy.url, raw)
    assert response.count(b"HTTP/1.1 200 OK") == 3
    first, second, third = (response.index(m) for m in (b"chat.completion", b'"object"',
                                                         b'"status"'))
    assert first < third and second < third


async def test_head_gets_headers_and_no_body(mock_llm, make_proxy):
    mock = await mock_llm()
    proxy = await make_proxy(one_model_config(mock.url))
    response = await read_to_close(proxy.url, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n"
                                         b"Connection: close\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert status_of(response) == 200 and b"Content-Length: " in head and body == b""


async def test_http10_stream_is_unchunked_and_ends_with_the_connection(mock_llm, make_proxy):
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(one_model_config(mock.url))
    response = await read_to_close(proxy.url, post(chat_body(stream=True), version=b"1.0"))
    head, _, body = response.partition(b"\r\n\r\n")
    assert status_of(response) == 200
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert body.startswith(b"data: ") and body.endswith(b"data: [DONE]\n\n")


async def test_expect_100_continue_is_answered_before_the_body(mock_llm, make_proxy):
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(one_model_config(mock.url))
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    body = chat_body()
    raw = post(body, b"Expect: 100-continue", b"Connection: close")
    writer.write(raw[:-len(body)])
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert status_of(response) == 200


async def test_compressed_bodies(mock_llm, make_proxy):
    """gzip and deflate (zlib or raw) are inflated; a bomb is 413; other codings 415."""
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(one_model_config(mock.url, max_in_flight=2)
                             | {"max_body_bytes": 100_000})
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    deflated = raw_deflate.compress(chat_body()) + raw_deflate.flush()
    for encoding, data in ((b"gzip", gzip.compress(chat_body())),
                           (b"deflate", zlib.compress(chat_body())),
                           (b"deflate", deflated)):
        response = await read_to_close(proxy.url, post(data, b"Content-Encoding: " + encoding,
                                                  b"Connection: close"))
        assert status_of(response) == 200, (encoding, response[:300])
    bomb = gzip.compress(b'{"model": "m", "x": "' + b"a" * 5_000_000 + b'"}')
    response = await read_to_close(proxy.url, post(bomb, b"Content-Encoding: gzip",
                                              b"Connection: close"))
    assert status_of(response) == 413
    assert json_body(response)["error"]["code"] == "request_too_large"
    response = await read_to_close(proxy.url, post(chat_body(), b"Content-Encoding: br",
                                              b"Connection: close"))
    assert status_of(response) == 415
    assert json_body(response)["error"]["code"] == "unsupported_content_encoding"


async def test_oversized_heads_get_openai_shaped_errors(mock_llm, make_proxy):
    mock = await mock_llm()
    proxy = await make_proxy(one_model_config(mock.url))
    response = await read_to_close(proxy.url, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(response) == 414
    assert json_body(response)["error"]["code"] == "target_too_long"
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    response = await read_to_close(proxy.url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert status_of(response) == 431
    assert json_body(response)["error"]["code"] == "too_many_headers"
    long_header = b"X-Long: " + b"v" * 20000 + b"\r\n"
    response = await read_to_close(proxy.url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + long_header
                              + b"\r\n")
    assert status_of(response) == 431
    assert json_body(response)["error"]["code"] == "header_too_large"
    response = await read_to_close(proxy.url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert status_of(response) == 400
    assert json_body(response)["error"]["code"] == "invalid_http"
