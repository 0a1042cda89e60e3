"""One upstream exchange is exactly one message (issue 10, section 2).

Each upstream here is a raw socket writing exact bytes (``tests/raw_upstream.py``): interim
1xx answers, bytes after the message, trailers, unsolicited bytes on an idle connection.
Clients are sequential on purpose: the proxy then reuses one pooled upstream connection,
which is where one client's bytes could reach the next.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import one_model_config
from tests.raw_upstream import Seen, answer, per_request, post, sends, split_head

CHAT = "/v1/chat/completions"


def completion(text: str) -> bytes:
    return json.dumps({"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()


@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
])
async def test_interim_answer_is_skipped_and_the_final_one_relayed(raw_upstream, make_proxy,
                                                                   interim):
    """Hazard: after a 1xx the client got an empty 200 at once and its permit was freed
    while the upstream was still generating; the next client on the pooled connection then
    received the first client's body."""
    first = completion("first client")
    second = completion("second client")
    upstream = await raw_upstream(per_request(
        sends(interim, *split_head(answer(200, first)), pause_s=0.3),
        sends(answer(200, second))))
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    status, headers, body = await post(proxy.url + CHAT)
    assert (status, body) == (200, first)
    assert "link" not in {name.lower() for name in headers}  # the hint's headers stay there
    status, _, body = await post(proxy.url + CHAT)
    assert (status, body) == (200, second)
    assert len(upstream.seen) == 2


@pytest.mark.parametrize("extra", [
    b"HTTP/1.1 200 OK\r\nX-Smuggled: yes\r\nContent-Length: 4\r\n\r\nEVIL",
    b"EVIL",  # not even a response
], ids=["second-message", "garbage"])
async def test_bytes_after_the_message_never_reach_any_client(raw_upstream, make_proxy, extra):
    """Hazard: an upstream's bytes after its Content-Length body were merged into the
    answer (the client got ``helloEVIL`` and a smuggled header) or read as the next
    client's response on the pooled connection."""
    upstream = await raw_upstream(per_request(
        sends(answer(200, b"hello") + extra), sends(answer(200, b"world"))))
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    status, headers, body = await post(proxy.url + CHAT)
    assert (status, body) == (200, b"hello")
    assert "x-smuggled" not in {name.lower() for name in headers}
    status, headers, body = await post(proxy.url + CHAT)
    assert (status, body) == (200, b"world")
    assert "x-smuggled" not in {name.lower() for name in headers}
    # the connection with leftover bytes was closed, not pooled
    assert [seen.conn for seen in upstream.seen] == [0, 1]


async def test_bytes_sent_to_an_idle_pooled_connection_close_it(raw_upstream, make_proxy):
    """Hazard: an upstream that wrote an unsolicited response while its connection sat
    idle in the pool had it read as the answer to the next client's request."""
    async def answer_then_more(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(200, b"hello"))
        await writer.drain()
        await asyncio.sleep(0.2)  # the proxy has pooled the connection by now
        # a head whose body would swallow the start of the next real answer
        writer.write(b"HTTP/1.1 200 OK\r\nX-Smuggled: yes\r\nContent-Length: 9\r\n\r\nEVIL")
        await writer.drain()

    upstream = await raw_upstream(per_request(answer_then_more, sends(answer(200, b"world"))))
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    assert (await post(proxy.url + CHAT))[::2] == (200, b"hello")
    await asyncio.sleep(0.5)
    status, headers, body = await post(proxy.url + CHAT)
    assert (status, body) == (200, b"world")
    assert "x-smuggled" not in {name.lower() for name in headers}


async def test_trailers_never_become_headers(raw_upstream, make_proxy):
    """Hazard: trailer fields of a chunked answer were appended to the header list the
    client's head is built from (a trailer could set any header, e.g. a cookie)."""
    chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\nTrailer: X-Smuggled\r\n\r\n"
               b"5\r\nhello\r\n0\r\nX-Smuggled: yes\r\n\r\n")
    upstream = await raw_upstream(sends(chunked))
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    status, headers, body = await post(proxy.url + CHAT)
    assert (status, body) == (200, b"hello")
    assert "x-smuggled" not in {name.lower() for name in headers}


async def test_204_announcing_a_body_is_not_reused(raw_upstream, make_proxy):
    """Hazard: a 204 with a Content-Length went back to the pool; its body bytes, written a
    moment later, met the next client's request on that connection (a 502 for them, or
    their answer)."""
    upstream = await raw_upstream(per_request(
        sends(b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n", b"EVIL", pause_s=0.2),
        sends(answer(200, b"world"))))
    proxy = await make_proxy(one_model_config(upstream.url, max_in_flight=1))
    assert (await post(proxy.url + CHAT))[0] == 204
    assert (await post(proxy.url + CHAT))[::2] == (200, b"world")
    assert [seen.conn for seen in upstream.seen] == [0, 1]
