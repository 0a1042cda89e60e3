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

Every call has a deadline (``timeout_s``, the store's ``command_timeout_s``): past it the
caller gets ``redis.exceptions.TimeoutError`` whatever the socket does (a black hole answers
nothing, a reopened connection may hang in its handshake). A call that timed out is not sent
again on a new connection. Error replies become redis-py's own exception classes
(``redis_errors.error_reply``), so ``-OOM`` or ``-READONLY`` mean the same on both stacks.

Where to connect and how (TLS, socket path, AUTH, SELECT, client name, a Sentinel's current
master) comes from redis-py's parsing of the URL (``redis_connect.Endpoint``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .redis_connect import Endpoint
from .redis_errors import error_reply

#: a dropped connection is reopened this many times, after a growing pause, before failing
RETRIES = 3
RETRY_BASE_S = 0.05
RETRY_CAP_S = 0.25
#: a script Redis forgot (restart, SCRIPT FLUSH) is loaded again at most this many times a call
SCRIPT_LOADS = 3


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
            return error_reply(rest.decode(errors="replace"))
        raise RedisConnectionError(f"unexpected reply from Redis: {line[:80]!r}")


def _bulk(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _command(*parts: str | bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(p) for p in parts)


class _Connection(asyncio.Protocol):
    """The socket: replies are parsed and handed to their callers in ``data_received``,
    without a reader task in between (one task switch per call, not two)."""

    def __init__(self, pipeline: ScriptPipeline):
        self.pipeline = pipeline
        self.parser = RespParser()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = loop.create_future()
        #: during AUTH / SELECT: their replies, before the connection carries calls
        self.setup_replies: list[Any] = []
        self.setup_done: asyncio.Future[None] | None = None
        self.setup_expected = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # small calls back to back must not wait for each other's ACK (Nagle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.pipeline.last_activity = self.pipeline.loop.time()
        parser = self.parser
        parser.feed(data)
        try:
            replies = parser.replies()
        except RedisConnectionError:
            self.abort()
            return
        if self.setup_done is not None:
            self.setup_replies.extend(replies)
            if len(self.setup_replies) >= self.setup_expected and not self.setup_done.done():
                self.setup_done.set_result(None)
            return
        self.pipeline.answered(replies, self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.pipeline.dropped(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class ScriptPipeline:
    """Runs script calls on one multiplexed connection, in the order they are made."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = 1.0,
                 connect_timeout_s: float = 1.0):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.connect_timeout_s = min(connect_timeout_s, timeout_s)
        self.loop = asyncio.get_running_loop()
        #: calls written and not yet answered: (payload, future, deadline), oldest first
        self._waiting: deque[tuple[bytes, asyncio.Future[Any], float]] = deque()
        self._conn: _Connection | None = None
        self._opening: asyncio.Task[None] | None = None
        self._prefixes: dict[tuple[str, int], bytes] = {}
        #: payloads handed to the connection so far; and per script sha, the number the last
        #: SCRIPT LOAD of it had (see ``call``)
        self._sent = 0
        self._loaded_at: dict[str, int] = {}
        self._closed = False
        #: when Redis last sent bytes (or a call went out to an idle connection)
        self.last_activity = 0.0
        self._sweeper: asyncio.TimerHandle | None = None

    async def call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One EVALSHA; loads the script when Redis does not know it (after a restart,
        a failover, SCRIPT FLUSH), and never passes NOSCRIPT on.

        Every call in flight when Redis forgot the script answers NOSCRIPT; only the first
        loads it. A call sent before that SCRIPT LOAD just goes again: Redis runs commands in
        the order they arrive on this one connection, so the load is in place by then. One
        load per script per forgetting, however many calls were on the wire.

        A caller that is cancelled does not withdraw its call: it was written already (or is
        sent on reconnection) and still runs; its reply is read and dropped in order, and the
        caller's cleanup, made later, runs after it.
        """
        for _ in range(SCRIPT_LOADS):
            sent_as = self._sent
            result = await self._send(self._pack(script, keys, args))
            if not isinstance(result, Exception):
                return result
            if not isinstance(result, NoScriptError):
                raise result
            if self._loaded_at.get(script.sha, -1) > sent_as:
                continue  # loaded again after this call went out: send it again
            self._loaded_at[script.sha] = self._sent
            source = script.script
            script.sha = await self.execute(b"SCRIPT", b"LOAD", bytes(source) if isinstance(
                source, memoryview) else source)
            self._prefixes.clear()
        raise RedisConnectionError("Redis keeps forgetting the scripts (NOSCRIPT)")

    async def execute(self, *parts: str | bytes) -> Any:
        """Any other command, in order with the script calls."""
        result = await self._send(_command(*parts))
        if isinstance(result, Exception):
            raise result
        return result

    def reset(self, exc: RedisError) -> None:
        """Give up on the connection and every call waiting on it (the store degraded): what
        Redis answers for them later must not count, and nothing is sent again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()
        self._fail(exc)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._opening is not None:
            self._opening.cancel()
            with contextlib.suppress(BaseException):
                await self._opening
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.close()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(conn.lost), 1.0)
        self._fail(RedisConnectionError("connection closed"))

    def _pack(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        cache_key = (script.sha, id(keys))
        prefix = self._prefixes.get(cache_key)
        if prefix is None:
            prefix = self._prefixes[cache_key] = b"".join(
                [_bulk("EVALSHA"), _bulk(script.sha), _bulk(str(len(keys))),
                 *(_bulk(key) for key in keys)])
        parts = [b"*%d\r\n" % (3 + len(keys) + len(args)), prefix]
        parts.extend([_bulk(arg if isinstance(arg, str | bytes) else str(arg)) for arg in args])
        return b"".join(parts)

    def _send(self, payload: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        if self._closed:
            future.set_exception(RedisConnectionError("connection closed"))
            return future
        self._sent += 1
        now = self.loop.time()
        if not self._waiting:
            self.last_activity = now  # silence counts from the first call out
        self._waiting.append((payload, future, now + self.timeout_s))
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)
        conn = self._conn
        if conn is not None and self._opening is None:
            assert conn.transport is not None
            conn.transport.write(payload)
        elif self._opening is None:
            self._opening = self.loop.create_task(self._open())
        return future

    # -- called by the connection -------------------------------------------------------------

    def answered(self, replies: list[Any], conn: _Connection) -> None:
        if conn is not self._conn:
            return  # a connection being replaced: its calls are sent again
        waiting = self._waiting
        for reply in replies:
            if not waiting:
                conn.abort()  # a reply nobody asked for: the stream is out of step
                return
            _, future, _ = waiting.popleft()
            if not future.done():  # a cancelled or timed-out caller's reply is dropped
                future.set_result(reply)

    def dropped(self, conn: _Connection) -> None:
        """Dropped or silent: reopen and resend what is still waiting (idempotent calls)."""
        if conn is not self._conn:
            return
        self._conn = None
        conn.abort()
        if self._waiting and not self._closed and self._opening is None:
            self._opening = self.loop.create_task(self._open())

    def _sweep(self) -> None:
        """Calls past their deadline fail; Redis silent past the timeout: drop the connection
        (what is still waiting is sent again on a new one)."""
        self._sweeper = None
        if self._closed:
            return
        now = self.loop.time()
        for _, future, deadline in self._waiting:
            if deadline > now:
                break  # deadlines grow along the queue
            if not future.done():
                future.set_exception(RedisTimeoutError(
                    f"Redis did not answer within {self.timeout_s:g}s"))
        conn = self._conn
        if (conn is not None and self._waiting
                and now - self.last_activity > self.timeout_s):
            self.dropped(conn)
        if self._waiting:
            self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    @property
    def _sweep_every(self) -> float:
        return max(0.01, min(0.5, self.timeout_s / 4))

    def _fail(self, exc: Exception) -> None:
        while self._waiting:
            _, future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc)

    # -- connecting ---------------------------------------------------------------------------

    async def _open(self) -> None:
        """Connect (retrying), then send every call still waiting again, in order."""
        try:
            for attempt in range(RETRIES + 1):
                self._drop_answered()
                if not self._waiting:
                    return  # every caller gave up: connect when the next call comes
                try:
                    conn = await asyncio.wait_for(self._connect(), self.connect_timeout_s)
                    if conn.lost.done():  # killed as it opened
                        raise RedisConnectionError("connection lost as it opened")
                    break
                except (OSError, TimeoutError, RedisError) as exc:
                    if attempt == RETRIES or self._closed:
                        self._fail(exc if isinstance(exc, RedisError) else
                                   RedisConnectionError(f"cannot reach Redis: {exc!r}"))
                        return
                    await asyncio.sleep(min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (attempt + 1)))
            if self._closed:
                conn.abort()
                return
            self._drop_answered()
            self._conn = conn
            self.last_activity = self.loop.time()
            assert conn.transport is not None
            conn.transport.write(b"".join(payload for payload, _, _ in self._waiting))
        finally:
            self._opening = None

    def _drop_answered(self) -> None:
        """Calls whose callers gave up (timed out, failed) are not sent on a new connection."""
        if any(future.done() for _, future, _ in self._waiting):
            self._waiting = deque(item for item in self._waiting if not item[1].done())

    async def _connect(self) -> _Connection:
        endpoint = self.endpoint
        if endpoint.path is not None:
            _, conn = await self.loop.create_unix_connection(
                lambda: _Connection(self), endpoint.path)
        else:
            host, port = await endpoint.address()
            tls = endpoint.tls
            _, conn = await self.loop.create_connection(
                lambda: _Connection(self), host, port, ssl=tls,
                server_hostname=host if tls is not None else None)
        setup = [_command(*parts) for parts in endpoint.setup()]
        if setup:
            await self._handshake(conn, setup)
        return conn

    async def _handshake(self, conn: _Connection, setup: list[bytes]) -> None:
        """AUTH / SELECT before the connection carries calls; their replies are read here."""
        conn.setup_done = self.loop.create_future()
        conn.setup_expected = len(setup)
        assert conn.transport is not None
        conn.transport.write(b"".join(setup))
        try:
            await conn.setup_done  # _open bounds the whole connect with its timeout
        except BaseException:
            conn.abort()
            raise
        conn.setup_done = None
        for answer in conn.setup_replies:
            if isinstance(answer, Exception):
                conn.abort()
                raise answer
