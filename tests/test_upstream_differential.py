"""Differential: raw upstream responses read by our upstream client and by h11 (issue 10, s. 5).

Each response in ``CORPUS`` is written in one piece by a raw-socket upstream, which closes the
connection 0.1 s later (so a close-delimited body ends). Our client (``UpstreamPool``) and an
h11 client ``Connection`` read the same bytes; both give the same outcome: refused, or
accepted with the same status, headers, body, and whether the connection could carry another
exchange. Where they may differ, the corpus says how: ``STRICTER`` (we refuse what h11
accepts: never a risk) or ``CRLF`` (a bare CRLF after the message, which llhttp skips and
h11 keeps as trailing data: no byte of it can reach an answer).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import pytest

from proxy.config import UpstreamConfig
from proxy.errors import ProxyError
from proxy.upstream import UpstreamPool
from tests.raw_upstream import RawUpstream, Seen

SAME, STRICTER, CRLF = "same", "stricter", "crlf"
OK = b"HTTP/1.1 200 OK\r\n"

CORPUS: dict[str, tuple[bytes, str]] = {
    "content-length": (OK + b"Content-Length: 5\r\n\r\nhello", SAME),
    "chunked": (OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", SAME),
    "close-delimited": (OK + b"\r\nhello", SAME),
    "http/1.0": (b"HTTP/1.0 200 OK\r\n\r\nhello", SAME),
    "http/1.0 length": (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", SAME),
    "connection close": (OK + b"Connection: close\r\nContent-Length: 5\r\n\r\nhello", SAME),
    "103 then 200": (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
                     + b"Content-Length: 5\r\n\r\nhello", SAME),
    "100 then 200": (b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"Content-Length: 5\r\n\r\nhello",
                     SAME),
    "101 unasked": ((b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: upgrade\r\n\r\nhello"), SAME),
    "bytes after the body": (OK + b"Content-Length: 5\r\n\r\nhelloEVIL", SAME),
    "second response after the body": (
        OK + b"Content-Length: 5\r\n\r\nhello" + OK + b"X-Smuggled: 1\r\nContent-Length: 4"
        b"\r\n\r\nEVIL", SAME),
    "crlf after the body": (OK + b"Content-Length: 5\r\n\r\nhello\r\n", CRLF),
    "length and chunked": (OK + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5\r\nhello\r\n0\r\n\r\n", STRICTER),
    "two different lengths": (OK + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
                              SAME),
    "two equal lengths": (OK + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
                          STRICTER),
    "length list": (OK + b"Content-Length: 5, 5\r\n\r\nhello", STRICTER),
    "negative length": (OK + b"Content-Length: -1\r\n\r\nhello", SAME),
    "signed length": (OK + b"Content-Length: +5\r\n\r\nhello", SAME),
    "hex length": (OK + b"Content-Length: 0x5\r\n\r\nhello", SAME),
    "body shorter than its length": (OK + b"Content-Length: 10\r\n\r\nhello", SAME),
    "gzip, chunked": (OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                      SAME),
    "chunked, gzip": (OK + b"Transfer-Encoding: chunked, gzip\r\n\r\nhello", SAME),
    "chunked twice": (OK + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n0\r\n\r\n", SAME),
    "xchunked": (OK + b"Transfer-Encoding: xchunked\r\n\r\nhello", SAME),
    "space before colon": (OK + b"Transfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                           SAME),
    "bad chunk size": (OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", SAME),
    "chunk extension": (OK + b"Transfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n",
                        SAME),
    "chunked cut short": (OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", SAME),
    "chunk lines end in LF": (OK + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n", SAME),
    "trailer": (OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", SAME),
    "obs-fold": (OK + b"X-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello", STRICTER),
    "head lines end in LF": (b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello", STRICTER),
    "NUL in a value": (OK + b"X-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello", SAME),
    "no reason phrase": (b"HTTP/1.1 200\r\nContent-Length: 5\r\n\r\nhello", SAME),
    "status 600": (b"HTTP/1.1 600 X\r\nContent-Length: 5\r\n\r\nhello", SAME),
    "two-digit status": (b"HTTP/1.1 20 X\r\nContent-Length: 5\r\n\r\nhello", SAME),
    "HTTP/2.0 status line": (b"HTTP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", STRICTER),
    "not HTTP": (b"hello world\r\n\r\n", SAME),
    "204 with a length and bytes": (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
                                    SAME),
    "304 with a length": (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", SAME),
    "nothing": (b"", SAME),
    "head never ends": (OK + b"Content-Length: 5\r\n", SAME),
    "header without colon": (OK + b"XA\r\nContent-Length: 5\r\n\r\nhello", SAME),
    "latin-1 value": (OK + b"X-A: caf\xe9\r\nContent-Length: 5\r\n\r\nhello", SAME),
    "leading whitespace": (OK + b" X-A: a\r\nContent-Length: 5\r\n\r\nhello", SAME),
}

Outcome = tuple[Any, ...]


async def read_with_ours(raw: bytes) -> Outcome:
    """("ok", status, headers, body, reusable) or ("refused",)."""
    async def script(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()

    upstream = await RawUpstream(script).start()
    pool = UpstreamPool(UpstreamConfig(name="up", url=upstream.url, read_timeout_s=2.0),
                        asyncio.get_running_loop())
    try:
        response = await pool.request("GET", "/", b"", None)
        body = await response.read()
        response.close()
        headers = [(name.lower(), value) for name, value in response.raw_headers]
        return ("ok", response.status, headers, body, pool.idle_count == 1)
    except ProxyError:
        return ("refused",)
    finally:
        pool.close()
        await upstream.close()


def read_with_h11(raw: bytes) -> Outcome:
    """The same, read by an h11 client connection (the close comes after all the bytes)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "up")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    status, headers, body, closed = 0, [], b"", False
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if closed:
                    return ("refused",)
                conn.receive_data(b"")
                closed = True
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = [(bytes(name), bytes(value)) for name, value in event.headers]
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                conn.next_event()  # PAUSED when bytes follow the message
                reusable = (conn.their_state is h11.DONE and not conn.trailing_data[0]
                            and not closed)
                return ("ok", status, headers, body, reusable)
            elif isinstance(event, h11.ConnectionClosed):
                return ("refused",)
    except h11.RemoteProtocolError:
        return ("refused",)


@pytest.mark.parametrize("name", list(CORPUS))
async def test_upstream_client_reads_responses_as_h11_does(name):
    """Hazard: a response our client frames differently from a reference parser is where
    one answer's bytes become another's (or a body in a coding nobody decodes reaches the
    client)."""
    raw, relation = CORPUS[name]
    ours, reference = await read_with_ours(raw), read_with_h11(raw)
    if relation == SAME:
        assert ours == reference
    elif relation == STRICTER:
        assert ours == ("refused",) and reference[0] == "ok"
    else:  # CRLF: the same answer; only h11 declines to reuse the connection
        assert ours[:4] == reference[:4] and ours[4] and not reference[4]
