"""A raw HTTP/1.1 client for tests: exact bytes out, the first final response parsed back.

Unlike aiohttp or the SDKs it sends anything (bad framing, pieces with pauses, a reset after
``abort_after_s``), keeps every byte received even when the connection is reset, and says
whether the response's framing was complete (``RawResponse.complete``). ``read_to_close``
is the simpler kind: send, then return every byte until the server closes the connection.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

RESPONSE_TIMEOUT_S = 10.0


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-cased names, last value wins
    body: bytes
    complete: bool  # framing satisfied (False: the connection closed first)


class _Collector(asyncio.Protocol):
    """Keeps every byte received; unlike StreamReader, a reset never hides buffered data."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.arrived = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.arrived.set()


def parse_response(data: bytes, closed: bool, head: bool) -> RawResponse | None:
    """The first final response in ``data``; None while incomplete and still open."""
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = data[:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        data = data[end + 4:]
        if status >= 200:
            break  # 1xx (100 Continue) precede the real response
    if head or status in (204, 304):
        return RawResponse(status, headers, b"", True)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, rest = bytearray(), data
        while True:
            size_end = rest.find(b"\r\n")
            if size_end < 0:
                break
            size = int(rest[:size_end].split(b";")[0], 16)
            if size == 0:
                return RawResponse(status, headers, bytes(body), True)
            if len(rest) < size_end + 2 + size + 2:
                break
            body += rest[size_end + 2:size_end + 2 + size]
            rest = rest[size_end + 2 + size + 2:]
        return RawResponse(status, headers, bytes(body), False) if closed else None
    if "content-length" in headers:
        length = int(headers["content-length"])
        if len(data) >= length:
            return RawResponse(status, headers, data[:length], True)
        return RawResponse(status, headers, data, False) if closed else None
    return RawResponse(status, headers, data, True) if closed else None


async def exchange(port: int, request: bytes | list[bytes], *, head: bool = False,
                   pause_s: float = 0.0, timeout: float = RESPONSE_TIMEOUT_S,
                   abort_after_s: float | None = None) -> RawResponse | None:
    """Send raw bytes (pieces ``pause_s`` apart), return the first final response.

    None: the connection closed without any response, or the client left (``abort_after_s``
    after sending, it resets the connection). Raises TimeoutError when nothing complete
    arrives within ``timeout``.
    """
    loop = asyncio.get_running_loop()
    transport, collector = await loop.create_connection(_Collector, "127.0.0.1", port)
    pieces = request if isinstance(request, list) else [request]

    async def send() -> None:
        for i, piece in enumerate(pieces):
            if i and pause_s:
                await asyncio.sleep(pause_s)
            if transport.is_closing():
                return
            transport.write(piece)

    async def respond() -> RawResponse | None:
        sending = asyncio.create_task(send())
        try:
            while True:  # an answer may come before everything is sent (413, 408)
                closed = collector.closed.done()
                response = parse_response(bytes(collector.data), closed, head)
                if response is not None or closed:
                    return response
                collector.arrived.clear()
                await collector.arrived.wait()
        finally:
            sending.cancel()

    try:
        async with asyncio.timeout(timeout):
            if abort_after_s is None:
                return await respond()
            try:
                return await asyncio.wait_for(respond(), abort_after_s)
            except TimeoutError:
                return None
    finally:
        transport.abort()


# -- whole exchanges: bytes in, every byte until the server closes out -------------------------

CHAT = b"/v1/chat/completions"


def chat_body(stream: bool = False) -> bytes:
    return json.dumps({"model": "m", "stream": stream, "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()


async def read_to_close(url: str, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read()
    finally:
        writer.close()


def post(body: bytes, *headers: bytes, target: bytes = CHAT, version: bytes = b"1.1") -> bytes:
    head = [b"POST " + target + b" HTTP/" + version, b"Host: x",
            b"Content-Type: application/json", b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def json_body(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])
