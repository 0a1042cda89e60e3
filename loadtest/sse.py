"""Reading an OpenAI-style SSE body on the load-generating side (generator, soak, sweep).

Only ``data:`` lines matter: each carries one JSON chunk, and ``data: [DONE]`` ends the stream.
Payloads are yielded as raw bytes, unparsed: a load generator parses only the chunks it needs
(usage, errors), so the cost per chunk stays a prefix check and a strip.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

#: the payload that ends an OpenAI stream
DONE = b"[DONE]"


class SSEData:
    """The ``data:`` payloads of one SSE body, stripped, in order, without ``[DONE]``.

    ``done`` becomes true when ``[DONE]`` ended the iteration; it stays false when the body
    ended first (a stream cut short) or the caller stopped reading.
    """

    __slots__ = ("lines", "done")

    def __init__(self, lines: AsyncIterable[bytes]) -> None:
        #: the body's lines, e.g. ``aiohttp.ClientResponse.content``
        self.lines = lines
        self.done = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._payloads()

    async def _payloads(self) -> AsyncIterator[bytes]:
        async for line in self.lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == DONE:
                self.done = True
                return
            yield payload
