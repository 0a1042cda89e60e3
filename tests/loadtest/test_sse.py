"""The load generators' SSE reader (``loadtest/sse.py``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable

import aiohttp

from loadtest.mock_llm import MockLLM
from loadtest.sse import SSEData
from tests.loadtest.mock_support import MSG


async def _lines(lines: Iterable[bytes], read: list[bytes]) -> AsyncIterator[bytes]:
    for line in lines:
        read.append(line)
        yield line


async def test_only_data_payloads_stripped_and_nothing_read_past_done() -> None:
    """Comments, event names and blank lines are not chunks; a reader that went on past
    [DONE] would wait on a keep-alive body that never ends."""
    read: list[bytes] = []
    body = [b": keep-alive\n", b"event: x\n", b'data: {"a":1}\n', b"\n", b'data:{"b":2}\r\n',
            b"data: [DONE]\n", b'data: {"late":1}\n']
    events = SSEData(_lines(body, read))
    assert [p async for p in events] == [b'{"a":1}', b'{"b":2}']
    assert events.done
    assert read == body[:-1]


async def test_a_body_that_ends_without_done_is_not_done() -> None:
    """A stream cut short must be told apart from a finished one."""
    events = SSEData(_lines([b'data: {"a":1}\n'], []))
    assert [p async for p in events] == [b'{"a":1}']
    assert not events.done


async def test_reads_a_real_stream_from_the_mock(mock: MockLLM) -> None:
    body = {"model": "m", "messages": MSG, "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}
    url = mock.url + "/v1/chat/completions"
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as r:
        events = SSEData(r.content)
        chunks = [json.loads(p) async for p in events]
    assert events.done
    assert len(chunks) == 5  # three tokens, the finish chunk, the usage chunk
    assert chunks[-1]["usage"]["completion_tokens"] == 3
