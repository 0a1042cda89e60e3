"""Proxied answers carry exactly one ``Date`` header (the proxy's)."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

from tests.conftest import one_model_config


async def _head_lines(origin: str, request: bytes) -> list[str]:
    parts = urlsplit(origin)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    return head.decode("latin-1").split("\r\n")


async def test_one_date_header_on_plain_streamed_and_passed_through_answers(mock_llm,
                                                                             make_proxy):
    """Hazard: the upstream's Date was relayed next to the proxy's own: two Date headers,
    which RFC 9110 does not allow and some clients refuse."""
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    proxy = await make_proxy(one_model_config(mock.url))
    for stream in (False, True):
        body = json.dumps({"model": "m", "stream": stream, "max_tokens": 2,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                   % (len(body), body))
        lines = await _head_lines(proxy.url, request)
        assert lines[0].startswith("HTTP/1.1 200"), lines
        dates = [h for h in lines if h.lower().startswith("date:")]
        assert len(dates) == 1, (stream, lines)
    lines = await _head_lines(proxy.url, b"GET /version HTTP/1.1\r\nHost: x\r\n"
                                         b"Connection: close\r\n\r\n")
    assert len([h for h in lines if h.lower().startswith("date:")]) == 1, lines
