"""Upstream answers are bounded, and a cut answer is never passed on as whole (issue 10, s. 2).

Heads are at most 64 KiB and 128 fields (as on the front), bodies read whole at most
``max_response_body_bytes``: past that the client gets an OpenAI-shaped 502 and the
connection is closed, so the proxy holds about one read beyond the bound. A body delimited by
the connection closing ends cleanly only on a FIN; after a reset an event stream ends with
the SSE error event and any other body (plain, NDJSON) is cut short for the client.
"""

from __future__ import annotations

import asyncio
import json
import os

import aiohttp
import pytest

from tests.conftest import assert_nothing_held, one_model_config
from tests.raw_upstream import CHAT_BODY, Seen, answer, post, reset, sends

CHAT = "/v1/chat/completions"
STREAM = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
          "stream": True}
MIB = 1 << 20


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def error_code(body: bytes) -> str:
    error = json.loads(body)["error"]
    assert error["message"] and error["type"]
    return error["code"]


async def test_64_mb_of_response_headers_are_refused_not_buffered(raw_upstream, make_proxy):
    """Hazard: an upstream sending 64 MB of response headers had them all buffered and
    relayed (the proxy grew to 354 MB)."""
    written = [0]

    async def huge_head(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Big: ")
        piece = b"a" * MIB
        for _ in range(64):
            writer.write(piece)
            await writer.drain()
            written[0] += len(piece)

    upstream = await raw_upstream(huge_head)
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    baseline = peak = rss_bytes()
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes())
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        status, headers, body = await post(proxy.url + CHAT)
    finally:
        done.set()
        await sampler
    assert status == 502
    assert error_code(body) == "upstream_response_too_large"
    assert "x-big" not in {name.lower() for name in headers}
    # the proxy stopped reading at the bound: the upstream could not push much more than
    # the kernel's socket buffers hold
    assert written[0] < 16 * MIB, written[0]
    assert peak - baseline < 50 * MIB, (peak - baseline) / MIB


@pytest.mark.parametrize("head", [
    b"".join(b"X-H%d: v\r\n" % i for i in range(200)),  # too many fields
    b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(100)),  # 100 KB, one write
], ids=["200-fields", "100KB-in-one-write"])
async def test_oversized_response_head_is_502(raw_upstream, make_proxy, head):
    """Hazard: a response head over 64 KiB (or with more than 128 fields) arriving in one
    read was accepted whole and relayed."""
    upstream = await raw_upstream(sends(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + head + b"\r\n{}"))
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    status, _, body = await post(proxy.url + CHAT)
    assert (status, error_code(body)) == (502, "upstream_response_too_large")


async def test_endless_interim_answers_are_502(raw_upstream, make_proxy):
    """Hazard: an upstream could hold a request (and its permit) with 1xx answers forever,
    each one resetting the silence timer."""
    upstream = await raw_upstream(sends(
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" * 20 + answer(200, b"{}")))
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    status, _, body = await post(proxy.url + CHAT)
    assert (status, error_code(body)) == (502, "upstream_bad_response")


@pytest.mark.parametrize("framing", ["content-length", "chunked", "close"])
async def test_body_over_the_limit_is_502_and_releases_the_permit(raw_upstream, make_proxy,
                                                                  framing):
    """Hazard: a non-streamed answer was read whole however large it was (an upstream could
    fill the proxy's memory). Bodies of unknown length (chunked, close-delimited) are relayed
    as they arrive instead, never buffered whole: they pass, with memory bounded by flow
    control."""
    body = b"x" * (2 * MIB)
    if framing == "content-length":
        raw = answer(200, body)
    elif framing == "chunked":
        raw = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    else:
        raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" \
            + body
    async def script(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
        if framing == "close":
            writer.close()  # the end of a close-delimited body

    upstream = await raw_upstream(script)
    config = one_model_config(upstream.url, max_in_flight=1)
    config["upstreams"]["up"]["max_response_body_bytes"] = MIB
    proxy = await make_proxy(config)
    for _ in range(2):  # the permit came back: a second request is admitted at once
        status, _, answer_body = await post(proxy.url + CHAT)
        if framing == "content-length":
            assert (status, error_code(answer_body)) == (502, "upstream_response_too_large")
        else:
            assert (status, answer_body) == (200, body)


def sse(*events: bytes) -> bytes:
    return b"".join(b"data: " + event + b"\n\n" for event in events)


CHUNK = json.dumps({"object": "chat.completion.chunk", "choices": [
    {"index": 0, "delta": {"content": "hi"}}]}).encode()


async def cut(seen: Seen, writer: asyncio.StreamWriter, head: bytes, body: bytes,
              by_reset: bool) -> None:
    writer.write(head + body)
    await writer.drain()
    await asyncio.sleep(0.2)
    if by_reset:
        reset(writer)
    else:
        writer.close()


SSE_HEAD_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
SSE_HEAD_CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n")


@pytest.mark.parametrize("framing,by_reset", [
    ("close", True), ("chunked", True), ("chunked", False)])
async def test_stream_cut_short_ends_with_the_sse_error_event(raw_upstream, make_proxy,
                                                              framing, by_reset):
    """Hazard: a close-delimited stream cut by a reset was passed on as if it had ended
    cleanly (the client could not tell a crash from the end)."""
    events = sse(CHUNK)
    if framing == "close":
        head, body = SSE_HEAD_CLOSE, events
    else:
        head, body = SSE_HEAD_CHUNKED, b"%x\r\n%s\r\n" % (len(events), events)

    async def script(seen: Seen, writer: asyncio.StreamWriter) -> None:
        await cut(seen, writer, head, body, by_reset)

    upstream = await raw_upstream(script)
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    status, _, got = await post(proxy.url + CHAT, STREAM)
    assert status == 200
    parts = [p for p in got.decode().split("\n\n") if p.strip()]
    assert json.loads(parts[0].removeprefix("data: "))["choices"][0]["delta"]["content"] == "hi"
    last = json.loads(parts[-1].removeprefix("data: "))
    assert last["error"]["type"] == "upstream_error", parts


async def test_close_delimited_plain_body_ended_by_a_fin_is_whole(raw_upstream, make_proxy):
    """Kept: a body delimited by a clean close (FIN) is a complete answer."""
    async def script(seen: Seen, writer: asyncio.StreamWriter) -> None:
        await cut(seen, writer, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Connection: close\r\n\r\n", b'{"ok": true}', by_reset=False)

    upstream = await raw_upstream(script)
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    assert (await post(proxy.url + CHAT))[::2] == (200, b'{"ok": true}')


async def post_cut(url: str) -> tuple[int, bytes, BaseException | None]:
    """One POST read to its end or to its cut: status, the body bytes received, and the
    client's error when the body ended short (None when it ended whole)."""
    got = bytearray()
    async with aiohttp.ClientSession() as session, session.post(
            url, json=CHAT_BODY, timeout=aiohttp.ClientTimeout(total=15)) as response:
        try:
            while chunk := await response.content.readany():
                got += chunk
        except aiohttp.ClientError as exc:
            return response.status, bytes(got), exc
        return response.status, bytes(got), None


@pytest.mark.parametrize("content_type,body", [
    (b"application/json", b'{"ok": tr'),
    (b"application/x-ndjson", b'{"message": {"content": "hi"}, "done": false}\n{"mess'),
], ids=["plain", "ndjson"])
@pytest.mark.parametrize("framing", ["close", "chunked"])
async def test_plain_body_cut_by_a_reset_is_cut_for_the_client(raw_upstream, make_proxy,
                                                                content_type, body, framing):
    """Hazard: a plain or NDJSON answer of unknown length cut by an upstream reset was
    relayed truncated as if complete (with an SSE error line appended that such a client
    cannot read): it must end incomplete for the client, and the permit come back."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n" % content_type
    if framing == "close":
        head, sent = head + b"Connection: close\r\n\r\n", body
    else:
        head, sent = head + b"Transfer-Encoding: chunked\r\n\r\n", b"%x\r\n%s\r\n" % (
            len(body), body)

    async def script(seen: Seen, writer: asyncio.StreamWriter) -> None:
        await cut(seen, writer, head, sent, by_reset=True)

    upstream = await raw_upstream(script)
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    for _ in range(2):  # the permit came back: the second request is admitted at once
        status, got, error = await post_cut(proxy.url + CHAT)
        assert status == 200
        assert isinstance(error, aiohttp.ClientPayloadError), (error, got)
        assert got == body  # what the upstream sent, and nothing the proxy made up
    await assert_nothing_held(proxy)


async def test_plain_body_cut_by_a_reset_is_reset_for_an_http_1_0_client(raw_upstream,
                                                                        make_proxy):
    """Hazard: an HTTP/1.0 client's body ends when the connection does, so a cut relayed as
    a plain close (FIN) would read as a whole answer: it must end with a reset."""
    async def script(seen: Seen, writer: asyncio.StreamWriter) -> None:
        await cut(seen, writer, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Connection: close\r\n\r\n", b'{"ok": tr', by_reset=True)

    upstream = await raw_upstream(script)
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    body = json.dumps(CHAT_BODY).encode()
    port = int(proxy.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST %s HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (CHAT.encode(), len(body), body))
    got = bytearray()
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(15):
            while chunk := await reader.read(65536):
                got += chunk
    writer.close()
    assert got.startswith(b"HTTP/1.1 200"), bytes(got)
    await assert_nothing_held(proxy)
