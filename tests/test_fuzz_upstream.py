"""Property-based fuzzing of the upstream side: whatever an upstream answers, the proxy
answers its client in time, never with a 500 of its own, gives the permit back, and lets no
byte of one answer reach another client.

The request-side twin is ``tests/test_fuzz.py``. Here the upstream is a raw socket
(``tests/raw_upstream.py``) writing a generated response -- interim 1xx heads, any status
line, headers with right, wrong, duplicate or conflicting framing, a body that matches its
framing or not, bytes after the message, split into several writes, then kept open, closed
(FIN) or reset (RST). Each example sends two requests one after the other: the generated
answer, then a clean one (``x-fuzz-clean`` names the body it must get, the same pooled upstream
connection when the first exchange allowed it). After every example:

1. both answers arrived (no hang) and neither is a proxy-made 500;
2. the first client never saw the marker written after a complete message, and the second got
   exactly its own body (or, when the upstream closed the connection right after the first
   answer, a 502 saying its POST was not sent again: the close may come after the request
   went out on that connection);
3. in flight and queue are back at zero and no request is active in the proxy.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from proxy.config import parse_config
from proxy.runner import RunningProxy, start_proxy
from tests.conftest import assert_nothing_held
from tests.raw_client import RawResponse, exchange
from tests.raw_upstream import RawUpstream, Seen, answer, reset

MARKER = b"EVIL-LEFTOVER"
#: what may follow a complete message: garbage, or a whole second response (smuggling)
LEFTOVERS = (MARKER, b"HTTP/1.1 200 OK\r\nX-Smuggled: " + MARKER + b"\r\nContent-Length: %d"
             b"\r\n\r\n%s" % (len(MARKER), MARKER))
READ_TIMEOUT_S = 0.5
MAX_BODY = 64 * 1024
FUZZ_SETTINGS = settings(
    max_examples=120, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)


@dataclass
class Generated:
    """One generated upstream answer and how the connection ends after it."""

    interim: list[bytes]
    status_line: bytes
    headers: list[bytes]
    body: bytes  # as written on the wire (already framed, or not)
    trailing: bytes  # written after a complete message (MARKER), or nothing
    splits: list[int]  # write boundaries, as offsets into the whole
    ending: str  # "open", "fin", "rst"
    #: framing that leaves bytes after the message (a shorter Content-Length, a 204 body):
    #: written later, they may meet the next request on the connection (then refused)
    leaves_bytes: bool = False

    def wire(self) -> bytes:
        head = self.status_line + b"".join(h + b"\r\n" for h in self.headers) + b"\r\n"
        return b"".join(self.interim) + head + self.body + self.trailing


SSE_BODY = (b'data: {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": '
            b'{"content": "hi"}}]}\n\ndata: [DONE]\n\n')
JSON_BODY = (b'{"object": "chat.completion", "choices": [{"index": 0, "message": {"role": '
             b'"assistant", "content": "hi"}}], "usage": {"prompt_tokens": 1, '
             b'"completion_tokens": 1}}')


@st.composite
def responses(draw: st.DrawFn) -> Generated:
    interim = draw(st.lists(st.sampled_from([
        b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        b"HTTP/1.1 102 Processing\r\n\r\n", b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ]), max_size=3))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0",
                                    b"HTTP/1.2", b"HTPT/1.1"]))
    status = draw(st.sampled_from([200, 200, 200, 201, 204, 304, 400, 404, 429, 500, 503,
                                   599, 600, 99, 1000]))
    status_line = version + b" %d X\r\n" % status
    sse = draw(st.booleans())
    payload = draw(st.sampled_from([SSE_BODY if sse else JSON_BODY, b"", b"x" * 70_000,
                                    draw(st.binary(max_size=200))]))
    framing = draw(st.sampled_from(["length", "length", "chunked", "chunked", "close",
                                    "both", "short-length", "long-length", "two-lengths",
                                    "bad-chunk", "chunked-gzip", "chunked-twice",
                                    "chunked-trailer"]))
    headers = [b"Content-Type: " + (b"text/event-stream" if sse else b"application/json")]
    consistent = framing in ("length", "chunked", "chunked-trailer")
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload) if payload else b"0\r\n\r\n"
    body = payload
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(payload))
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        body = chunked
    elif framing == "both":
        headers += [b"Content-Length: %d" % len(payload), b"Transfer-Encoding: chunked"]
        body = chunked
    elif framing == "short-length":
        headers.append(b"Content-Length: %d" % (len(payload) + 7))
    elif framing == "long-length":
        headers.append(b"Content-Length: %d" % max(0, len(payload) - 3))
    elif framing == "two-lengths":
        headers += [b"Content-Length: %d" % len(payload), b"Content-Length: 1"]
    elif framing == "bad-chunk":
        headers.append(b"Transfer-Encoding: chunked")
        body = b"zz\r\n" + payload
    elif framing == "chunked-gzip":
        headers.append(b"Transfer-Encoding: chunked, gzip")
    elif framing == "chunked-trailer":  # a trailer field must never become a header
        headers.append(b"Transfer-Encoding: chunked")
        body = chunked[:-2] + b"X-Trailer: " + MARKER + b"\r\n\r\n"
    elif framing == "chunked-twice":
        headers += [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"]
        body = chunked
    headers += draw(st.lists(st.sampled_from([
        b"Connection: close", b"Connection: keep-alive", b"X-Upstream: 1", b"Trailer: X-T",
        b"Set-Cookie: a=b", b"X-Big: " + b"v" * 70_000, b"X-Obs: a\r\n folded",
        b"X-Bad\x00: v", b"Content-Encoding: gzip", b"Keep-Alive: timeout=1",
    ]), max_size=3))
    if draw(st.booleans()):
        headers = draw(st.permutations(headers))
    trailing = b""
    if consistent and status not in (204, 304) and draw(st.booleans()):
        trailing = draw(st.sampled_from(LEFTOVERS))
    head_end = len(b"".join(interim)) + len(status_line) + sum(len(h) + 2 for h in headers) + 2
    # cuts stay inside the message: leftover bytes come in the write that ends it
    cuts = draw(st.lists(st.integers(1, max(1, head_end + len(body) - 1)), max_size=3))
    if draw(st.booleans()):
        cuts.append(head_end)  # the body a moment after the head (a 1xx's end must not end it)
    splits = sorted({cut for cut in cuts if 0 < cut < head_end + len(body)})
    ending = draw(st.sampled_from(["open", "open", "fin", "rst"]))
    leaves_bytes = framing == "long-length" or (status in (204, 304) and bool(body))
    return Generated(interim, status_line, headers, body, trailing, splits, ending,
                     leaves_bytes)


class LiveUpstreamSide:
    """Proxy + raw upstream on one event loop that the test drives."""

    def __init__(self, runner: asyncio.Runner, proxy: RunningProxy, upstream: RawUpstream):
        self.runner = runner
        self.proxy = proxy
        self.upstream = upstream
        self.port = int(proxy.url.rsplit(":", 1)[1])
        self.current: Generated | None = None
        self.examples = 0

    async def script(self, seen: Seen, writer: asyncio.StreamWriter) -> None:
        clean = seen.headers.get("x-fuzz-clean")
        if clean is not None:
            writer.write(answer(200, clean.encode()))
            await writer.drain()
            return
        generated = self.current
        assert generated is not None
        data = generated.wire()
        start = 0
        for cut in [*generated.splits, len(data)]:
            writer.write(data[start:cut])
            await writer.drain()
            start = cut
            await asyncio.sleep(0.002)
        if generated.ending == "fin":
            writer.close()
        elif generated.ending == "rst":
            reset(writer)

    async def settle(self) -> None:
        await assert_nothing_held(self.proxy, 3.0)
        for _ in range(300):
            if not self.proxy.proxy.active:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"still active in the proxy: {self.proxy.proxy.active}")


async def _start(runner_holder: dict[str, Any]) -> tuple[RunningProxy, RawUpstream]:
    upstream = RawUpstream(lambda seen, writer: runner_holder["live"].script(seen, writer))
    await upstream.start()
    data = {
        "store": "memory",
        "upstreams": {"up": {"url": upstream.url, "read_timeout_s": READ_TIMEOUT_S,
                             "max_response_body_bytes": MAX_BODY}},
        "models": {"m": {"upstreams": ["up"], "max_in_flight": 2}},
    }
    proxy = await start_proxy(parse_config(data, environ={}), port=0)
    return proxy, upstream


@pytest.fixture
def live_upstream() -> Iterator[LiveUpstreamSide]:
    with asyncio.Runner() as runner:
        holder: dict[str, Any] = {}
        proxy, upstream = runner.run(_start(holder))
        live = holder["live"] = LiveUpstreamSide(runner, proxy, upstream)
        try:
            yield live
            runner.run(live.settle())
        finally:
            runner.run(proxy.close())
            runner.run(upstream.close())


def _request(body: dict[str, Any], *headers: bytes) -> bytes:
    data = json.dumps(body).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n"
            b"Content-Type: application/json\r\n" + b"".join(h + b"\r\n" for h in headers)
            + b"Content-Length: %d\r\n\r\n" % len(data) + data)


def _assert_not_proxy_500(response: RawResponse, what: str) -> None:
    if response.status == 500:
        assert b"internal error in llm-throttle" not in response.body, what


@FUZZ_SETTINGS
@given(generated=responses(), stream=st.booleans())
def test_any_upstream_answer_no_500_no_hang_nothing_held_nothing_crosses(
        live_upstream: LiveUpstreamSide, generated: Generated, stream: bool) -> None:
    live = live_upstream
    live.current = generated
    live.examples += 1
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "stream": stream}
    shown = f"{generated.wire()[:400]!r} ending {generated.ending}"

    async def both() -> tuple[RawResponse | None, RawResponse | None]:
        first = await exchange(live.port, _request(body), timeout=15)
        clean = f"clean-{live.examples}"
        second = await exchange(live.port, _request(body, b"x-fuzz-clean: " + clean.encode()),
                                timeout=15)
        return first, second

    first, second = live.runner.run(both())
    assert first is not None, f"no answer to the generated response {shown}"
    event(f"first: {first.status}")
    _assert_not_proxy_500(first, shown)
    assert MARKER not in first.body, shown
    assert not any(MARKER.decode() in v for v in first.headers.values()), shown
    assert second is not None, f"no answer to the clean request after {shown}"
    if second.status == 502 and (generated.ending != "open" or generated.leaves_bytes):
        # The upstream closed right after answering, or wrote bytes after the message a
        # moment later: the second request may have gone out on that connection first. It
        # is then refused (a POST is not sent again), never answered with those bytes.
        code = json.loads(second.body)["error"]["code"]
        assert code in ("upstream_unreachable", "upstream_bad_response"), shown
        event(f"second: 502 {code}")
    else:
        assert (second.status, second.body) == (200, f"clean-{live.examples}".encode()), shown
    live.runner.run(live.settle())
