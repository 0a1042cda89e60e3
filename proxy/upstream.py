"""A lean HTTP/1.1 client for upstreams: pooled keep-alive connections, streamed bodies.

Why not aiohttp's client: on the proxy's hot path it cost about a third of a millisecond of CPU
per request (request object, URL and cookie handling, tracing hooks), more than everything else
the proxy does. Upstreams are a handful of known origins speaking plain HTTP/1.1, so this client
does only that: one write per request, llhttp (``httptools``) to parse the answer, and the body
handed over as the upstream sends it.

Theory of operation: a ``_Connection`` is an asyncio protocol that serves one request at a
time. ``UpstreamPool.request`` takes an idle connection (or opens one), writes the request, and
returns an ``UpstreamResponse`` once the status line and headers are in. The body arrives in
``data_received``: it is queued for ``read`` (reading pauses past ``_HIGH_WATER`` bytes), or,
once a relay calls ``pump``, handed to its sink from that same callback, so a streamed chunk
reaches the client without a task switch. When the message is complete and both sides allow
keep-alive, the connection goes back to the pool; anything else (early close by the reader, a
parse error, a timeout) closes it, which tells the upstream to stop generating. Silence longer
than the read timeout is found by one sweep per pool, not a timer per request.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

from .errors import UpstreamError, UpstreamTimeout

log = logging.getLogger("llm_throttle.upstream")

_HIGH_WATER = 1 << 20
_NO_BODY_STATUS = frozenset({204, 304})


class _StaleConnection(Exception):
    """A reused keep-alive connection closed before answering: safe to retry once."""


class UpstreamResponse:
    """Status, headers, and the body as it arrives. Use as ``async with`` or call ``close``."""

    __slots__ = ("status", "reason", "headers", "raw_headers", "_conn", "_released")

    def __init__(self, conn: _Connection, status: int, reason: str, headers: CIMultiDict[str],
                 raw_headers: list[tuple[bytes, bytes]]):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.raw_headers = raw_headers
        self._conn = conn
        self._released = False

    def pump(self, sink: Callable[[bytes, bool], bool],
             wait_ready: Callable[[], Awaitable[None]]) -> Awaitable[None]:
        """Hand the body to ``sink(data, end)`` as it arrives, straight from the parser's
        callback (no task switch per chunk); ``end`` is True once, with the last bytes (or
        none), so the relay ends its own body in that same callback. Returns when the body
        has ended; raises what failed the upstream. ``sink`` returns False to stop reading
        until ``wait_ready()`` returns (a client slower than the upstream)."""
        return self._conn.pump(sink, wait_ready)

    @property
    def body_ready(self) -> bool:
        """Body bytes (or its end) have arrived and are waiting to be read or pumped."""
        conn = self._conn
        return bool(conn._chunks) or conn._complete

    def read_now(self) -> bytes | None:
        """The whole body when it has all arrived already (small answers); else None."""
        return self._conn.read_now()

    async def read(self) -> bytes:
        body = self._conn.read_now()
        if body is not None:
            return body
        parts = []
        next_chunk = self._conn.next_chunk
        while (chunk := await next_chunk()) is not None:
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        """Hand the connection back if the message was read whole, else close it."""
        if not self._released:
            self._released = True
            self._conn.finish()

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream, serving one request at a time."""

    def __init__(self, pool: UpstreamPool):
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reused = False
        self.closed = False
        self._expect_no_body = False
        self._reset()

    def _reset(self) -> None:
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._complete = False
        self._head_done = False
        self._got_bytes = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._keep_alive = True
        self._sink: Callable[[bytes, bool], bool] | None = None
        self._sink_paused = False
        self._end_delivered = False
        self._eof_body = False
        self._no_body = False
        #: when bytes last came (or the request went out): the pool's sweep times out silence
        self.last_activity = 0.0

    # -- asyncio protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        self.last_activity = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:  # a bug in a callback
            log.error("upstream response handling failed", exc_info=exc.__context__)
            self._fail(UpstreamError(f"upstream '{self.pool.name}' response could not be "
                                     "relayed"))
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError(f"upstream '{self.pool.name}' tried to upgrade the protocol"))
        except httptools.HttpParserError:
            self._fail(UpstreamError(f"upstream '{self.pool.name}' sent a malformed response"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self._head is None and not self._head_done:
            return  # idle in the pool
        if self._head_done and self._eof_body and not self._complete:
            self._complete = True  # a body delimited by the connection closing
            self._wake()
        elif not self._complete:
            if self.reused and not self._got_bytes:
                self._fail(_StaleConnection())
            else:
                self._fail(UpstreamError(
                    f"upstream '{self.pool.name}' closed the connection mid-response"))

    def pause_writing(self) -> None:  # request bodies are small; nothing to throttle
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows
            self._raw_headers.clear()
            return
        self._head_done = True
        self._keep_alive = self.parser.should_keep_alive()
        headers: CIMultiDict[str] = CIMultiDict(
            [(n.decode("latin-1"), v.decode("utf-8", "surrogateescape"))
             for n, v in self._raw_headers])
        self._no_body = status in _NO_BODY_STATUS or self._expect_no_body
        self._eof_body = (
            not self._no_body and "Content-Length" not in headers
            and "chunked" not in headers.get("Transfer-Encoding", "").lower()
        )
        # The reason phrase is not read (no on_status callback): it carries no meaning (RFC
        # 9110 section 15) and the client gets the standard one for the status.
        response = UpstreamResponse(self, status, "", headers, self._raw_headers)
        if self._no_body:
            self._complete = True
            # After HEAD a body length may be announced but never sent: don't reuse.
            self._keep_alive = self._keep_alive and not self._expect_no_body
        if self._head is not None and not self._head.done():
            self._head.set_result(response)

    def on_body(self, body: bytes) -> None:
        sink = self._sink
        if sink is not None:  # pumping: straight to the relay, no queue, no wake-up
            if not sink(body, False) and not self._sink_paused:
                self._pause_for_sink()
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._complete = True
        sink = self._sink
        if sink is not None:
            self._end_delivered = True
            sink(b"", True)  # the relay ends its body in this same callback
        self._wake()

    # -- used by the pool and the response ---------------------------------------------------------

    def send(self, data: bytes, expect_no_body: bool) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        self._reset()
        self._expect_no_body = expect_no_body
        self._head = head = self.loop.create_future()
        self.last_activity = self.loop.time()
        self.transport.write(data)
        return head

    @property
    def busy(self) -> bool:
        """A request is out and its answer is not complete (the read timeout applies)."""
        return self._head is not None and not self._complete and not self.closed

    def read_now(self) -> bytes | None:
        """The whole body if it has all arrived already (the usual case for small answers)."""
        if not self._complete or self._error is not None:
            return None
        return self._take_chunks()

    async def next_chunk(self) -> bytes | None:
        while True:
            if self._chunks:
                # Hand over everything that has arrived: one write downstream, not one each.
                return self._take_chunks()
            if self._error is not None:
                raise self._error
            if self._complete:
                return None
            await self._wait()

    def _take_chunks(self) -> bytes:
        """Everything queued, as one piece; reading resumes if the queue had paused it."""
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def _wait(self) -> None:
        """Until the next body bytes, the end, an error, or a pause for the sink."""
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def pump(self, sink: Callable[[bytes, bool], bool],
                   wait_ready: Callable[[], Awaitable[None]]) -> None:
        self._sink = sink
        try:
            if self._chunks or self._complete:  # what came with the head
                self._deliver()
            while True:
                if self._error is not None:
                    raise self._error
                if self._complete:
                    if not self._end_delivered:  # a body that ended with the connection
                        self._deliver()
                    return
                if self._sink_paused:
                    await wait_ready()
                    self._sink_paused = False
                    if self.transport is not None and not self.closed:
                        self.transport.resume_reading()
                    if self._chunks:
                        self._deliver()
                    continue
                await self._wait()
        finally:
            self._sink = None

    def _deliver(self) -> None:
        """What arrived before pumping began, to the sink in one call (with the end when it
        came too: the relay writes its last chunk and its terminator in one write)."""
        assert self._sink is not None
        data = self._take_chunks()
        end = self._complete
        self._end_delivered = end
        if not self._sink(data, end) and not end and not self._sink_paused:
            self._pause_for_sink()

    def _pause_for_sink(self) -> None:
        self._sink_paused = True  # the pump waits for the consumer, then resumes
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._wake()

    def finish(self) -> None:
        """The reader is done: reuse the connection if the exchange ended cleanly."""
        if (self._complete and self._keep_alive and self._error is None and not self.closed
                and not self._chunks):
            self._head = None
            self._head_done = False
            self.reused = True
            self.pool.put_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()  # tells the upstream to stop generating
        self.pool.forget(self)

    def _fail(self, error: Exception) -> None:
        if self._error is None and not self._complete:
            self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._wake()
        self.abort()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def time_out(self, read_timeout: float) -> None:
        where = "mid-response" if self._head_done else "before answering"
        self._fail(UpstreamTimeout(
            f"upstream '{self.pool.name}' sent nothing for {read_timeout:g}s {where}"))


class UpstreamPool:
    """Keep-alive connections to one upstream origin (no cap: the limiter caps requests)."""

    def __init__(self, name: str, url: str, connect_timeout_s: float, read_timeout_s: float,
                 loop: asyncio.AbstractEventLoop):
        parts = urlsplit(url)
        self.name = name
        self.loop = loop
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None)
        default_port = 443 if parts.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default_port else f"{host}:{self.port}"
        #: a path prefix of the origin (``http://host/ollama``) is kept before every path
        self.prefix = parts.path.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        #: silence is checked by one sweep per pool, not a timer per request
        self._sweep_every = max(0.01, min(1.0, read_timeout_s / 4))
        self._sweeper = loop.call_later(self._sweep_every, self._sweep)

    async def request(self, method: str, target: str, headers: bytes,
                      body: bytes | None) -> UpstreamResponse:
        """Send one request; raises UpstreamError (502) or UpstreamTimeout (504).

        ``headers`` are the header lines, encoded, each ending in CRLF (see ``encode_headers``).
        """
        head = f"{method} {self.prefix}{target} HTTP/1.1\r\nHost: {self.host_header}\r\n"
        parts = [head.encode("utf-8", "surrogateescape"), headers]
        if body is not None:
            parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
            parts.append(body)
        else:
            parts.append(b"\r\n")
        data = b"".join(parts)
        head_only = method == "HEAD"
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            try:
                return await conn.send(data, head_only)
            except _StaleConnection:
                continue  # the upstream closed it while idle: try the next / a new one
            except BaseException:
                conn.abort()
                raise
        conn = await self._connect()
        try:
            return await conn.send(data, head_only)
        except _StaleConnection:
            raise UpstreamError(f"upstream '{self.name}' closed the connection") from None
        except BaseException:
            conn.abort()
            raise

    def _sweep(self) -> None:
        """Fail the requests whose upstream has been silent for longer than the read timeout."""
        now = self.loop.time()
        timeout = self.read_timeout_s
        for conn in [c for c in self._open if c.busy and now - c.last_activity > timeout]:
            conn.time_out(timeout)
        self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None)
        except TimeoutError:
            raise UpstreamTimeout(
                f"upstream '{self.name}' did not accept a connection within "
                f"{self.connect_timeout_s:g}s") from None
        except OSError:
            raise UpstreamError(
                f"upstream '{self.name}' refused the connection or could not be reached"
            ) from None
        self._open.add(conn)
        return conn

    def put_back(self, conn: _Connection) -> None:
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        self._sweeper.cancel()
        for conn in list(self._open):
            conn.abort()
        self._idle.clear()


def encode_headers(headers: Iterable[tuple[str, str]]) -> bytes:
    """Header lines as ``UpstreamPool.request`` takes them."""
    return "".join([f"{name}: {value}\r\n" for name, value in headers]).encode(
        "utf-8", "surrogateescape")
