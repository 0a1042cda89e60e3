"""The front server's bounds on what a client can make it hold or accept (issue 10, section 3):
head and framing limits, HTTP versions, pipelining errors, connections, draining."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time

from loadtest.processes import free_port
from tests.conftest import one_model_config
from tests.raw_client import chat_body, json_body, post, read_to_close, status_of

GET_MODELS = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"


def responses_in(raw: bytes) -> list[int]:
    """Status codes of the answers in a byte stream (the bodies here never hold a status line)."""
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def test_a_head_over_64k_in_one_read_is_refused(mock_llm, make_proxy):
    """Hazard: the head limit was counted only across reads, so a 100 KB head arriving in one
    read (100 headers of 1 KB: under the per-header and count limits) got through."""
    mock = await mock_llm()
    proxy = await make_proxy(one_model_config(mock.url))
    headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * 1000) for i in range(100))
    response = await read_to_close(proxy.url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + headers
                              + b"Connection: close\r\n\r\n")
    assert status_of(response) == 431
    assert json_body(response)["error"]["code"] == "header_too_large"
    assert mock.state.in_flight == 0
    # just under the limit is still served
    headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * 1000) for i in range(60))
    response = await read_to_close(proxy.url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + headers
                              + b"Connection: close\r\n\r\n")
    assert status_of(response) == 200


async def test_chunk_extensions_are_bounded(mock_llm, make_proxy):
    """Hazard: llhttp skips chunk extensions without a limit, and they never counted against
    the body limit: a 20 MB extension on a 5-byte chunk was accepted with a 1 MiB limit."""
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(one_model_config(mock.url) | {"max_body_bytes": 1 << 20})
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    body = chat_body()
    raw = head + b"%x;ext=" % len(body) + b"e" * 20_000_000 + b"\r\n" + body + b"\r\n0\r\n\r\n"
    response = await read_to_close(proxy.url, raw, timeout=30)
    assert status_of(response) == 413
    assert json_body(response)["error"]["code"] == "chunk_framing_too_large"
    # ordinary chunking (small chunks, a short extension) is fine
    pieces = [body[i:i + 16] for i in range(0, len(body), 16)]
    chunked = b"".join(b"%x;a=b\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    response = await read_to_close(proxy.url, head.replace(b"\r\n\r\n", b"\r\nConnection: close"
                                                      b"\r\n\r\n") + chunked)
    assert status_of(response) == 200


async def test_request_lines_other_than_http_10_and_11_get_505(mock_llm, make_proxy):
    """Hazard: ``HTTP/2.0`` and ``HTTP/0.9`` request lines were served as if HTTP/1.1 (and
    forwarded upstream), ``HTTP/1.2`` got a generic 400."""
    mock = await mock_llm()
    proxy = await make_proxy(one_model_config(mock.url))
    for version in (b"2.0", b"0.9", b"1.2", b"3.0"):
        response = await read_to_close(proxy.url, b"GET /v1/models HTTP/" + version +
                                  b"\r\nHost: x\r\n\r\n")
        assert status_of(response) == 505, (version, response[:200])
        assert json_body(response)["error"]["code"] == "http_version_not_supported"


async def test_an_http10_client_is_not_sent_100_continue(mock_llm, make_proxy):
    """Hazard: ``100 Continue`` sent to an HTTP/1.0 client, which reads it as the final
    answer (RFC 9110 10.1.1: a server must not send it to 1.0)."""
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(one_model_config(mock.url))
    reader, writer = await asyncio.open_connection(*address(proxy.url))
    body = chat_body()
    raw = post(body, b"Expect: 100-continue", version=b"1.0")
    writer.write(raw[:-len(body)])
    await writer.drain()
    early = b""
    try:
        early = await asyncio.wait_for(reader.read(100), 0.5)
    except TimeoutError:
        pass
    writer.write(body)
    response = early + await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert b"100 Continue" not in response
    assert status_of(response) == 200


async def test_a_malformed_request_in_a_pipeline_gets_its_400_before_the_close(mock_llm,
                                                                            make_proxy):
    """Hazard: a parse error while an earlier pipelined request was being answered closed the
    connection after that answer without ever answering the malformed one."""
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(one_model_config(mock.url))
    raw = post(chat_body()) + GET_MODELS + b"GET /v1/models HTTP/1.1\r\nBad Header\r\n\r\n" + \
        GET_MODELS
    response = await read_to_close(proxy.url, raw)
    assert responses_in(response) == [200, 200, 400]
    assert b"Connection: close" in response.rsplit(b"HTTP/1.1 400", 1)[1]
    assert json.loads(response.rsplit(b"\r\n\r\n", 1)[1])["error"]["code"] == "invalid_http"


async def test_an_error_answered_before_the_body_is_read_is_not_lost_to_a_reset(mock_llm,
                                                                              make_proxy):
    """Hazard: a 413 answered from Content-Length, then an immediate close with the body still
    arriving: the kernel resets the connection and the client may see ECONNRESET instead of
    the 413."""
    mock = await mock_llm()
    proxy = await make_proxy(one_model_config(mock.url) | {"max_body_bytes": 1 << 16})
    body = b"x" * (8 << 20)
    response = await read_to_close(proxy.url, post(body), timeout=30)
    assert status_of(response) == 413


async def test_draining_closes_idle_keep_alive_connections(mock_llm, make_proxy):
    """Hazard: at shutdown idle keep-alive connections stayed open until the idle timeout,
    and a client reusing one raced the final close."""
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(one_model_config(mock.url))
    reader, writer = await asyncio.open_connection(*address(proxy.url))
    writer.write(GET_MODELS)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    proxy.server.stop_listening()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the proxy, at once
    writer.close()


async def test_max_connections_refuses_with_a_503_and_serves_again_below_it(mock_llm,
                                                                          make_proxy):
    """Hazard: no bound on client connections (each holds buffers and a file descriptor);
    the one over the bound must get a clear answer, not a hang or a bare reset."""
    mock = await mock_llm()
    admin = f"127.0.0.1:{free_port()}"
    proxy = await make_proxy(one_model_config(mock.url) | {"max_connections": 3,
                                                           "admin_listen": admin})
    held = [await asyncio.open_connection(*address(proxy.url)) for _ in range(3)]
    await asyncio.sleep(0.1)
    response = await read_to_close(proxy.url, GET_MODELS)
    assert status_of(response) == 503
    assert json_body(response)["error"]["code"] == "too_many_connections"
    assert b"retry-after: 1\r\n" in response.lower()
    assert proxy.server.refused_connections == 1
    # the admin listener is apart: scrapes still get through
    response = await read_to_close("http://" + admin, b"GET /throttle/status HTTP/1.1\r\nHost: x"
                              b"\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200
    _, writer = held.pop()
    writer.close()
    for _ in range(100):
        if len(proxy.server.connections) < 3:
            break
        await asyncio.sleep(0.02)
    response = await read_to_close(proxy.url, GET_MODELS.replace(b"\r\n\r\n",
                                                            b"\r\nConnection: close\r\n\r\n"))
    assert status_of(response) == 200
    for _, writer in held:
        writer.close()


async def test_where_llhttp_is_laxer_than_rfc_9112_the_proxy_refuses(mock_llm, make_proxy):
    """Hazards found by the differential test against h11: ``Transfer-Encoding: gzip,
    chunked`` was accepted and the still gzip-coded body handed on as if plain; HTTP/1.1
    requests without Host or with two were served (RFC 9112 3.2 says 400)."""
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(one_model_config(mock.url))
    body = chat_body()
    raw = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
           b"\r\nTransfer-Encoding: gzip, chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    response = await read_to_close(proxy.url, raw)
    assert status_of(response) == 400
    assert json_body(response)["error"]["code"] == "unsupported_transfer_encoding"
    for hosts in (b"", b"Host: a\r\nHost: b\r\n"):
        response = await read_to_close(proxy.url, b"GET /v1/models HTTP/1.1\r\n" + hosts + b"\r\n")
        assert status_of(response) == 400, hosts
        assert json_body(response)["error"]["code"] == "invalid_host"
    assert mock.state.in_flight == 0


async def test_an_upgrade_request_with_a_body_is_refused_at_once(mock_llm, make_proxy):
    """Hazard: llhttp stops at an Upgrade head, so the body of ``POST`` + ``Upgrade: h2c`` was
    never parsed and the request waited out the body timeout (60 s by default)."""
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(one_model_config(mock.url) | {"body_read_timeout_s": 20})
    raw = post(chat_body(), b"Connection: upgrade", b"Upgrade: h2c")
    response = await read_to_close(proxy.url, raw, timeout=5)
    assert status_of(response) == 400
    assert json_body(response)["error"]["code"] == "upgrade_not_supported"


async def test_http10_with_transfer_encoding_closes_after_its_answer(mock_llm, make_proxy):
    """Hazard: RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has suspect framing;
    keeping its connection alive (``Connection: keep-alive``) lets a desync carry on."""
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(one_model_config(mock.url))
    body = chat_body()
    raw = (b"POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
           b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) + GET_MODELS
    response = await read_to_close(proxy.url, raw)
    assert responses_in(response) == [200]
    assert b"Connection: close" in response.split(b"\r\n\r\n", 1)[0]


async def test_a_client_that_never_takes_its_answers_is_cut_off(mock_llm, make_proxy):
    """Hazard: a client pipelining without reading holds its connection (and the answers in
    its write buffer) for good; once reading pauses, it is idle like a slowloris and is cut
    off after ``header_read_timeout_s``."""
    mock = await mock_llm()
    proxy = await make_proxy(one_model_config(mock.url) | {
        "header_read_timeout_s": 1, "clients": {"w": {"key": "k1"}}})  # quick 401s
    sock = socket.create_connection(address(proxy.url))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    payload = GET_MODELS * 500
    cut_off_after = None
    started = time.monotonic()
    try:
        while time.monotonic() - started < 15:
            try:
                sock.send(payload)
            except BlockingIOError:
                pass
            except (ConnectionResetError, BrokenPipeError):
                cut_off_after = time.monotonic() - started
                break
            await asyncio.sleep(0.02)
    finally:
        sock.close()
    assert cut_off_after is not None, "the connection was still open after 15 s"
