"""A loopback upstream on a raw socket: exact bytes, framing faults no real server makes.

Each connection reads one request at a time (head, then a ``Content-Length`` body) and hands
it to the test's ``script(seen, writer)``, which writes whatever bytes it likes: interim 1xx
answers, bytes after the message, oversized heads, a reset mid-body. When the script returns
and the connection is still open, the next request on it is read the same way, so a pooled
connection's second exchange is seen too. Every request is recorded in ``seen`` with the
index of the connection it came on; ``active``/``peak`` count requests being answered at once.
It routes any path (``;x`` and ``%23x`` included, as lenient servers do).

Tests that only need well-formed answers write a handler instead, ``seen -> Reply`` (a status,
a content type, body parts: one part is sent with ``Content-Length``, several chunked with an
``await`` point between them), and serve it with ``RawUpstream(replies(handler))``.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

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

    def json(self) -> Any:
        return json.loads(self.body)


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
    active: int = 0  # requests whose script is running
    peak: int = 0  # most requests answered at once
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()  # each connection's task then ends on its own
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=5)
            for task in pending:  # a script still sleeping or waiting on a gate
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self._server is not None:
            await self._server.wait_closed()

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
                self.active += 1
                self.peak = max(self.peak, self.active)
                try:
                    await self.script(seen, writer)
                except (ConnectionError, TimeoutError):
                    return
                finally:
                    self.active -= 1
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


@dataclass
class Reply:
    """A well-formed answer for ``replies``."""

    status: int = 200
    content_type: str = "application/json"
    parts: list[bytes] = field(default_factory=lambda: [b"{}"])
    hold_s: float = 0.0  # before answering (to see requests overlap)
    gate: asyncio.Event | None = None  # awaited after the first part (streamed replies)
    chunked: bool | None = None  # default: chunked when several parts

    @classmethod
    def json(cls, obj: Any, **kwargs: Any) -> Reply:
        return cls(parts=[json.dumps(obj).encode()], **kwargs)


Handler = Callable[[Seen], Reply | Awaitable[Reply]]


def replies(handler: Handler) -> Script:
    """A script answering each request with the ``Reply`` the handler returns (or awaits)."""

    async def script(seen: Seen, writer: asyncio.StreamWriter) -> None:
        reply = handler(seen)
        if not isinstance(reply, Reply):
            reply = await reply
        if reply.hold_s:
            await asyncio.sleep(reply.hold_s)
        await _send(writer, reply)

    return script


async def _send(writer: asyncio.StreamWriter, reply: Reply) -> None:
    chunked = reply.chunked if reply.chunked is not None else len(reply.parts) > 1
    head = f"HTTP/1.1 {reply.status} X\r\nContent-Type: {reply.content_type}\r\n"
    if chunked:
        writer.write((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
        for i, part in enumerate(reply.parts):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            if i == 0 and reply.gate is not None:
                await asyncio.wait_for(reply.gate.wait(), 10)
        writer.write(b"0\r\n\r\n")
    else:
        body = b"".join(reply.parts)
        writer.write((head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    await writer.drain()
