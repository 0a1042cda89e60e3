"""A loopback upstream that answers with exact bytes: framing faults no real server makes.

Each connection reads one request at a time (head, then a ``Content-Length`` body) and hands
it to the test's ``script(seen, writer)``, which writes whatever bytes it likes: interim 1xx
answers, bytes after the message, oversized heads, a reset mid-body. When the script returns
and the connection is still open, the next request on it is read the same way, so a pooled
connection's second exchange is seen too. Every request is recorded in ``seen`` with the
index of the connection it came on.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

CHAT_BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@dataclass
class Seen:
    """One request as the upstream read it."""

    conn: int  # index of the connection it came on (0, 1, ...)
    method: str
    target: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


Script = Callable[[Seen, asyncio.StreamWriter], Awaitable[None]]


def answer(status: int = 200, body: bytes = b"", *headers: str,
           content_type: str = "application/json") -> bytes:
    """A well-formed response with a ``Content-Length``."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def sends(*parts: bytes, pause_s: float = 0.0) -> Script:
    """A script that writes ``parts`` in order (with a pause between them)."""

    async def script(seen: Seen, writer: asyncio.StreamWriter) -> None:
        for i, part in enumerate(parts):
            if i and pause_s:
                await asyncio.sleep(pause_s)
            writer.write(part)
            await writer.drain()

    return script


def split_head(response: bytes) -> tuple[bytes, bytes]:
    """A response as two writes: its head, then its body."""
    head, body = response.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", body


def per_request(*scripts: Script) -> Script:
    """The n-th request gets the n-th script (the last one repeats)."""
    calls = [0]

    async def script(seen: Seen, writer: asyncio.StreamWriter) -> None:
        index = min(calls[0], len(scripts) - 1)
        calls[0] += 1
        await scripts[index](seen, writer)

    return script


async def post(url: str, body: dict[str, Any] | None = None,
               ) -> tuple[int, dict[str, str], bytes]:
    """One JSON POST on a client connection of its own: status, headers, body."""
    async with aiohttp.ClientSession() as session, session.post(
            url, json=body or CHAT_BODY, timeout=aiohttp.ClientTimeout(total=15)) as response:
        return response.status, dict(response.headers), await response.read()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST, not a FIN (SO_LINGER 0): what a crashed upstream looks like."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class RawUpstream:
    """``await RawUpstream(script).start()``; ``url`` to point a proxy at; ``close()`` after."""

    script: Script
    tls: ssl.SSLContext | None = None  # serve https with this server context
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()  # each connection's task then ends on its own
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        index = self.connections
        self.connections += 1
        try:
            while not writer.is_closing():
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                        ConnectionError, ssl.SSLError):
                    return
                seen = _parse_head(index, head)
                length = int(seen.headers.get("content-length", "0"))
                if length:
                    try:
                        seen.body = await reader.readexactly(length)
                    except (asyncio.IncompleteReadError, ConnectionError):
                        return
                self.seen.append(seen)
                try:
                    await self.script(seen, writer)
                except ConnectionError:
                    return
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()


def _parse_head(index: int, head: bytes) -> Seen:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return Seen(index, method, target, headers, b"")
