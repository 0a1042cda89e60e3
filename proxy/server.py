"""A lean HTTP/1.1 server on llhttp (``httptools``): what the proxy needs and nothing more.

Why not aiohttp's server: measured here, aiohttp's low-level server alone cost ~0.17 ms of CPU
per request, more than half of the proxy's 0.3 ms budget, and a streamed chunk took a task
switch plus a write lock. The proxy has one handler and needs HTTP/1.1 with keep-alive,
bounded heads and bodies, and answers written whole or streamed chunk by chunk. llhttp (the
parser of Node.js, also behind aiohttp and uvicorn) parses; this module frames, keeps alive
and times out. Its upstream twin is ``proxy/upstream.py``.

Theory of operation: one ``_Connection`` protocol per TCP connection. The parser calls back as
bytes arrive. When a request's head is complete a ``Request`` (``proxy/messages.py``, with the
answers ``Response`` and ``StreamResponse``) is made and handled as a task
when the connection is free, else it waits its turn (pipelining). Body bytes go to the
request, where ``Request.read_body`` picks them up. A client that disconnects cancels its
handler task, so a queued request leaves the queue and a stream stops at once. The handler
answers with a ``Response`` (one write) or streams with ``Request.start_stream`` (one write per
chunk, awaiting only while the client's socket buffer is full). The connection then serves
the next request, or closes when either side asked for it or the request body was not read
whole.

Limits, each answered with an OpenAI-shaped error: request target 8 KiB (414), one header 16
KiB, 128 headers, 64 KiB of head (431), the head within ``header_read_timeout_s`` of the
connection going idle (slowloris: closed), the body within ``max_body_bytes`` (413, also after
decompression) and ``body_read_timeout_s`` (408).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

import httptools
from multidict import CIMultiDict

from .errors import BadRequest, HeadTooLarge, ProxyError, TargetTooLong
from .messages import NO_BODY_STATUS, Request, Response, StreamResponse

log = logging.getLogger("llm_throttle.server")

MAX_TARGET_BYTES = 8192
MAX_HEADER_BYTES = 16384
MAX_HEADERS = 128
MAX_HEAD_BYTES = 65536
#: pipelined requests parsed ahead of the one being answered before reading pauses
_MAX_PIPELINED = 8
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_METHODS = {m: m.decode() for m in (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS",
                                     b"PATCH")}

Handler = Callable[["Request"], Awaitable["Response | StreamResponse"]]


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_body_bytes: int
    body_read_timeout_s: float
    header_read_timeout_s: float


class _HeadRejected(Exception):
    def __init__(self, error: ProxyError):
        super().__init__(error.message)
        self.error = error


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler, writes the answers."""

    def __init__(self, server: HttpServer):
        self.server = server
        self.loop = server.loop
        self.limits = server.limits
        self.handler = server.handler
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.local_port = 0
        self.lost = False
        self.write_paused = False
        #: since when the connection has waited for a request head (None: one is in)
        self.idle_since: float | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._url: list[bytes] = []
        self._url_bytes = 0
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head_seen = False
        self._big_feed = False
        self._parsing: Request | None = None  # the request whose body is being parsed
        self._current: Request | None = None  # the request being answered
        self._task: asyncio.Task[None] | None = None
        self._pipeline: deque[Request] = deque()
        self._closing = False  # answer the current request, then close
        self._reading_paused = False

    # -- asyncio protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            self.local_port = sockname[1]
        self.idle_since = self.loop.time()
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._head_seen = False
        self._big_feed = len(data) > MAX_HEADER_BYTES or self._head_bytes > 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _HeadRejected):
                self._parse_failed(cause.error)
            else:  # a bug in a callback
                log.error("HTTP parser callback failed", exc_info=cause)
                self._parse_failed(BadRequest("malformed HTTP request", code="invalid_http"))
        except httptools.HttpParserUpgrade:
            # CONNECT or an Upgrade header: the head (and any body) came; nothing after it
            # is HTTP/1.1 any more. The handler answers (CONNECT is refused), then close.
            self._closing = True
        except httptools.HttpParserError as exc:
            self._parse_failed(BadRequest(f"malformed HTTP request: {exc}",
                                          code="invalid_http"))
        else:
            if not self._head_seen and self._parsing is None and self._url:
                self._head_bytes += len(data)  # a head still arriving
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._parse_failed(HeadTooLarge(
                        f"request head over {MAX_HEAD_BYTES} bytes"))

    def eof_received(self) -> bool | None:
        return None  # a half-closed client is gone: close (and cancel its handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._pipeline.clear()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client closed the connection"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        if self.lost:
            raise ConnectionResetError("the client closed the connection")
        if not self.write_paused:
            return
        self._drain_waiter = self.loop.create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._url_bytes += len(url)
        if self._url_bytes > MAX_TARGET_BYTES:
            raise _HeadRejected(TargetTooLong(f"request target over {MAX_TARGET_BYTES} bytes"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))  # limits: on_headers_complete, data_received

    def _check_header_limits(self) -> None:
        raw = self._raw_headers
        if len(raw) > MAX_HEADERS:
            raise _HeadRejected(HeadTooLarge(f"more than {MAX_HEADERS} request headers",
                                             code="too_many_headers"))
        if self._big_feed:  # only a big read can hold a header over the limit
            for name, value in raw:
                if len(name) + len(value) > MAX_HEADER_BYTES:
                    raise _HeadRejected(HeadTooLarge(
                        f"a request header is over {MAX_HEADER_BYTES} bytes",
                        code="header_too_large"))

    def on_headers_complete(self) -> None:
        if self._big_feed or len(self._raw_headers) > MAX_HEADERS:
            self._check_header_limits()
        parser = self.parser
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("latin-1")
        url = self._url
        target = (url[0] if len(url) == 1 else b"".join(url)).decode("utf-8", "surrogateescape")
        headers: CIMultiDict[str] = CIMultiDict(
            [(n.decode("latin-1"), v.decode("utf-8", "surrogateescape"))
             for n, v in self._raw_headers])
        request = Request(self, method, target, parser.get_http_version(), headers,
                          parser.should_keep_alive(), self._raw_headers)
        # ready for the next head (no on_message_begin callback: one call less per request)
        self._url = []
        self._url_bytes = 0
        self._raw_headers = []
        self._head_bytes = 0
        self._head_seen = True
        self._parsing = request
        if self._current is None:
            self.idle_since = None
            self._current = request
            self._task = self.loop.create_task(self._answer(request))
        else:
            self._pipeline.append(request)
            if len(self._pipeline) >= _MAX_PIPELINED and not self._reading_paused:
                self._reading_paused = True
                self.transport.pause_reading()

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is not None:
            request._feed(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        if request is not None:
            self._parsing = None
            request._end()

    # -- answering -------------------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        self._current = request
        self._task = self.loop.create_task(self._answer(request))

    async def _answer(self, request: Request) -> None:
        try:
            response = await self.handler(request)
        except (asyncio.CancelledError, ConnectionResetError):
            return  # the client left (or the server is closing): nobody to answer
        except Exception:  # a bug in the handler: answer shaped, keep serving
            log.exception("unhandled error on %s %s", request.method, request.path[:200])
            if request._started:  # a stream cut short: only closing can tell the client
                self.abort()
                return
            response = Response.for_error(ProxyError("internal error in llm-throttle"))
        if self.lost:
            return
        if isinstance(response, StreamResponse):
            response.finish()
        elif not request._started:
            self._write_whole(request, response)
        self._done(request)

    def _done(self, request: Request) -> None:
        self._current = None
        self._task = None
        if self.lost:
            return
        if not request.keep_alive or not request._complete:
            self.transport.close()  # flushes what was written first
        elif self._pipeline:  # requests parsed ahead are answered, even when closing
            if self._reading_paused:
                self._reading_paused = False
                self.transport.resume_reading()
            self._start(self._pipeline.popleft())
        elif self._closing:
            self.transport.close()
        else:
            self.idle_since = self.loop.time()

    def _head(self, request: Request, status: int, reason: str | None,
              headers: bytes | Iterable[tuple[str, str]], framing: bytes) -> bytes:
        request._started = True
        status_line = self.server.status_line(status, reason)
        if not isinstance(headers, bytes):
            headers = "".join([f"{name}: {value}\r\n" for name, value in headers]).encode(
                "utf-8", "surrogateescape")
        if not request.keep_alive or (self._closing and not self._pipeline):
            connection = b"Connection: close\r\n"
        elif request.version == "1.0":
            connection = b"Connection: keep-alive\r\n"
        else:
            connection = b""
        return b"".join((status_line, headers, framing, connection, self.server.date_line,
                         b"\r\n"))

    def _write_whole(self, request: Request, response: Response) -> None:
        status = response.status
        body = response.body
        if status in NO_BODY_STATUS:
            head = self._head(request, status, response.reason, response.headers, b"")
            self.transport.write(head)
            return
        head = self._head(request, status, response.reason, response.headers,
                          b"Content-Length: %d\r\n" % len(body))
        if request.method == "HEAD" or not body:
            self.transport.write(head)
        elif len(body) < 65536:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))

    def start_stream(self, request: Request, status: int, reason: str | None,
                     headers: bytes | Iterable[tuple[str, str]],
                     defer_head: bool) -> StreamResponse:
        if self.lost:
            raise ConnectionResetError("the client closed the connection")
        silent = request.method == "HEAD" or status in NO_BODY_STATUS
        chunked = not silent and request.version != "1.0"
        if not chunked and not silent:
            request.keep_alive = False  # an HTTP/1.0 body ends when the connection does
        framing = b"Transfer-Encoding: chunked\r\n" if chunked else b""
        response = StreamResponse(self, status, chunked, silent,
                                  self._head(request, status, reason, headers, framing))
        if not defer_head:
            response.send_head()
        return response

    def _parse_failed(self, error: ProxyError) -> None:
        """The rest of the input is unreadable: answer what can be answered, then close."""
        self._closing = True
        request = self._parsing
        if request is not None and not request._complete:
            request._fail(error)  # its handler reads the body and answers with the error
            return
        if self._current is None and not self.lost:
            request = Request(self, "GET", "/", "1.1", CIMultiDict(), False, [])
            self._write_whole(request, Response.for_error(error))
            self.transport.close()

    def close_if_idle(self, now: float, timeout: float) -> None:
        """Slowloris guard: no whole request head within ``timeout`` of going idle."""
        if self.idle_since is not None and now - self.idle_since > timeout:
            self.idle_since = None
            self.transport.close()

    def abort(self) -> None:
        if not self.lost:
            self.transport.abort()


class HttpServer:
    """Listening sockets and their connections around one handler."""

    def __init__(self, handler: Handler, limits: ServerLimits):
        self.handler = handler
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self.date_line = b""
        self._status_lines: dict[tuple[int, str | None], bytes] = {}
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep()

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Start accepting on ``host:port`` (0: a free port); returns the bound address."""
        server = await self.loop.create_server(lambda: _Connection(self), host, port,
                                               reuse_address=True, backlog=1024)
        self._servers.append(server)
        return server.sockets[0].getsockname()[:2]

    def status_line(self, status: int, reason: str | None) -> bytes:
        """``HTTP/1.1 200 OK`` and CRLF, cached (upstreams send a handful of distinct ones)."""
        line = self._status_lines.get((status, reason))
        if line is None:
            text = reason or _REASONS.get(status, "Unknown")
            line = f"HTTP/1.1 {status} {text}\r\n".encode("latin-1", "replace")
            if len(self._status_lines) < 512:
                self._status_lines[(status, reason)] = line
        return line

    def _sweep(self) -> None:
        """Once a second (or faster for short timeouts): the Date header, idle heads."""
        now = self.loop.time()
        self.date_line = f"Date: {formatdate(usegmt=True)}\r\n".encode()
        timeout = self.limits.header_read_timeout_s
        for conn in list(self.connections):
            conn.close_if_idle(now, timeout)
        self._sweeper = self.loop.call_later(min(1.0, timeout / 4), self._sweep)

    def stop_listening(self) -> None:
        """New connections are refused; open ones carry on (graceful shutdown)."""
        for server in self._servers:
            server.close()
        self._servers.clear()

    async def close(self) -> None:
        """Stop listening, cancel what still runs, close every connection."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        tasks = [c._task for c in self.connections if c._task is not None]
        for conn in list(self.connections):
            conn.abort()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
