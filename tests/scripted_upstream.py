"""A permissive HTTP/1.1 upstream on a raw socket: routes any path (``;x`` and ``%23x``
included, as lenient servers do), counts requests at once, and answers with scripted bytes.

Each handler gets the request and returns a ``Reply``: a status, a content type and body
parts. One part is sent with ``Content-Length``; several are sent chunked, one chunk per part,
with ``await`` points between them (``Reply.gate``: wait for an event before the next part).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
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


class RawUpstream:
    """``async with RawUpstream(handler) as up: ... up.url, up.peak, up.seen``."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.active = 0
        self.peak = 0
        self.seen: list[Seen] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()  # the connection's task then ends on its own (no cancel noise)
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=5)
            for task in pending:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(method, target, headers, body)
                self.seen.append(seen)
                self.active += 1
                self.peak = max(self.peak, self.active)
                try:
                    reply = self.handler(seen)
                    if not isinstance(reply, Reply):
                        reply = await reply
                    if reply.hold_s:
                        await asyncio.sleep(reply.hold_s)
                    await self._send(writer, reply)
                finally:
                    self.active -= 1
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError,
                asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    @staticmethod
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
