"""The hot path's connection: every script call on one socket, in call order, many in flight.

Why not a redis-py connection pool: concurrent calls on a pool reach Redis in any order (two
requests arriving at one host in order A, B could queue B, A), each call borrows a connection
and pays redis-py's packing and parsing layers. Here a call is written at once on the one
socket, Redis answers in the order it received them, and replies are matched first in, first
out; the constant part of each script call (``EVALSHA sha numkeys keys...``) is packed once.

A connection that drops (or stays silent past the timeout) is reopened and every call still
waiting is sent again, in order: every script is idempotent per request id, so a call that
had run before the drop changes nothing the second time. After ``RETRIES`` failed reopenings
the waiting calls fail with ``redis.exceptions.ConnectionError`` (the store then degrades).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: a dropped connection is reopened this many times, after a growing pause, before failing
RETRIES = 3
RETRY_BASE_S = 0.05
RETRY_CAP_S = 0.25


class RespParser:
    """Incremental RESP2 reply parser (what scripts return: arrays, bulk strings, integers)."""

    __slots__ = ("_buffer", "_pos")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buffer[:self._pos]
            self._pos = 0
        self._buffer += data

    def replies(self) -> list[Any]:
        out = []
        while True:
            start = self._pos
            try:
                out.append(self._parse())
            except IndexError:  # incomplete: wait for more bytes
                self._pos = start
                return out

    def _line(self) -> bytes:
        end = self._buffer.find(b"\r\n", self._pos)
        if end < 0:
            raise IndexError
        line = bytes(self._buffer[self._pos:end])
        self._pos = end + 2
        return line

    def _parse(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            end = self._pos + size
            if end + 2 > len(self._buffer):
                raise IndexError
            value = bytes(self._buffer[self._pos:end]).decode()
            self._pos = end + 2
            return value
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._parse() for _ in range(size)]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            message = rest.decode()
            if message.startswith("NOSCRIPT"):
                return NoScriptError(message)
            return ResponseError(message)
        raise RedisConnectionError(f"unexpected reply from Redis: {line[:80]!r}")


def _bulk(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _command(*parts: str | bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(p) for p in parts)


class ScriptPipeline:
    """Runs script calls on one multiplexed connection, in the order they are made."""

    def __init__(self, url: str, timeout_s: float = 2.0, connect_timeout_s: float = 1.0):
        self.url = url
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        #: calls written and not yet answered: (payload, future), oldest first
        self._waiting: deque[tuple[bytes, asyncio.Future[Any]]] = deque()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._opening: asyncio.Task[None] | None = None
        self._prefixes: dict[tuple[str, int], bytes] = {}
        self._closed = False

    async def call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One EVALSHA; loads the script once when Redis does not know it (after a restart).

        A caller that is cancelled does not withdraw its call: it still runs, and the caller's
        cleanup, made later, runs after it.
        """
        while True:
            result = await asyncio.shield(self._send(self._pack(script, keys, args)))
            if not isinstance(result, Exception):
                return result
            if not isinstance(result, NoScriptError):
                raise result
            source = script.script
            script.sha = await self.execute(b"SCRIPT", b"LOAD", bytes(source) if isinstance(
                source, memoryview) else source)
            self._prefixes.clear()

    async def execute(self, *parts: str | bytes) -> Any:
        """Any other command, in order with the script calls."""
        result = await asyncio.shield(self._send(_command(*parts)))
        if isinstance(result, Exception):
            raise result
        return result

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        for task in (self._reader_task, self._opening):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._fail(RedisConnectionError("connection closed"))

    def _pack(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        cache_key = (script.sha, id(keys))
        prefix = self._prefixes.get(cache_key)
        if prefix is None:
            prefix = self._prefixes[cache_key] = b"".join(
                [_bulk("EVALSHA"), _bulk(script.sha), _bulk(str(len(keys))),
                 *(_bulk(key) for key in keys)])
        parts = [b"*%d\r\n" % (3 + len(keys) + len(args)), prefix]
        parts.extend(_bulk(arg if isinstance(arg, str | bytes) else str(arg)) for arg in args)
        return b"".join(parts)

    def _send(self, payload: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        future.add_done_callback(_retrieve)  # a cancelled caller never reads it
        if self._closed:
            future.set_exception(RedisConnectionError("connection closed"))
            return future
        self._waiting.append((payload, future))
        if self._writer is not None and self._opening is None:
            self._writer.write(payload)
        elif self._opening is None:
            self._opening = loop.create_task(self._open())
        return future

    async def _open(self) -> None:
        """Connect (retrying), then send every waiting call again, in order."""
        try:
            for attempt in range(RETRIES + 1):
                try:
                    reader, writer = await asyncio.wait_for(self._connect(),
                                                            self.connect_timeout_s)
                    break
                except (OSError, TimeoutError, RedisConnectionError, ResponseError) as exc:
                    if attempt == RETRIES or self._closed:
                        self._fail(RedisConnectionError(f"cannot reach Redis: {exc}"))
                        return
                    await asyncio.sleep(min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (attempt + 1)))
            self._writer = writer
            writer.write(b"".join(payload for payload, _ in self._waiting))
            self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
        finally:
            self._opening = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            reader, writer = await asyncio.open_unix_connection(parts.path)
        else:
            context = ssl.create_default_context() if parts.scheme == "rediss" else None
            reader, writer = await asyncio.open_connection(
                parts.hostname or "localhost", parts.port or 6379, ssl=context)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # small calls back to back must not wait for each other's ACK (Nagle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        setup = []
        if parts.password is not None:
            user = unquote(parts.username) if parts.username else None
            setup.append(_command("AUTH", *([user] if user else []), unquote(parts.password)))
        db = parts.path.strip("/") if parts.scheme != "unix" else ""
        if db and db != "0":
            setup.append(_command("SELECT", db))
        if setup:
            writer.write(b"".join(setup))
            parser = RespParser()
            answers: list[Any] = []
            while len(answers) < len(setup):
                data = await reader.read(65536)
                if not data:
                    raise RedisConnectionError("connection closed during setup")
                parser.feed(data)
                answers += parser.replies()
            for answer in answers:
                if isinstance(answer, Exception):
                    writer.close()
                    raise answer
        return reader, writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        parser = RespParser()
        try:
            while True:
                if self._waiting:
                    async with asyncio.timeout(self.timeout_s):
                        data = await reader.read(65536)
                else:
                    data = await reader.read(65536)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                parser.feed(data)
                for reply in parser.replies():
                    _, future = self._waiting.popleft()
                    if not future.done():
                        future.set_result(reply)
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError, RedisConnectionError, RedisTimeoutError):
            # Dropped or silent: reopen and resend what is still waiting (idempotent calls).
            if self._writer is not None:
                self._writer.close()
            self._writer = None
            self._reader_task = None
            if self._waiting and not self._closed and self._opening is None:
                self._opening = asyncio.get_running_loop().create_task(self._open())

    def _fail(self, exc: Exception) -> None:
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
