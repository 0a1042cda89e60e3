"""One client connection of the front server (``proxy/server.py``): its life, pipelining,
backpressure and when an answer is the connection's last (which bytes frame it:
``proxy/answer_framing.py``).

Theory of operation: the parser (``proxy/request_parser.py``) calls back as bytes arrive.
When a request's head is complete a ``Request`` (``proxy/messages.py``, with the answers
``Response`` and ``StreamResponse``; they reach the connection only through the ``Channel``
interface declared there) is made and handled as a task when the connection is free, else it
waits its turn (pipelining). Body bytes go to the request, where ``Request.read_body`` picks
them up. A client that disconnects cancels its handler task, so a queued request leaves the
queue and a stream stops at once. The handler answers with a ``Response`` (one write) or
streams with ``Request.start_stream`` (one write per chunk, awaiting only while the client's
socket buffer is full). The connection then serves the next request, or closes when either
side asked for it or the request body was not read whole.

The connection's life is ``ConnState``, its transitions kept as data in
``proxy/connection_state.py``; how it ends (lingering close, idle guards, draining, abort) is
``proxy/connection_close.py``.

Memory stays bounded whatever the client does (``proxy/flow_control.py`` holds the pauses):
a read is parsed in slices of ``FEED_SLICE`` bytes, and between slices the rest is held
unparsed while reading is paused; reading pauses while the answers' unsent output is above
the transport's high-water mark (a client that pipelines and never reads: the next request is
not even started), while ``_MAX_PIPELINED`` requests wait behind the one being answered, and
while a request parsed ahead has a body (bodies are read one at a time). An error answer is
followed by a lingering close (``connection_close``), so the client reads it, not a reset.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from multidict import CIMultiDict

from .answer_framing import (
    ONE_WRITE_MAX,
    answer_head,
    connection_header,
    stream_framing,
    stream_framing_header,
    whole_framing,
)
from .connection_close import ConnectionClosing
from .connection_state import READING, ConnState
from .errors import ProxyError, TooManyConnections
from .flow_control import FlowControl, ReadPause
from .messages import Request, Response, StreamResponse
from .request_parser import FEED_SLICE, RequestParser

log = logging.getLogger("llm_throttle.server")

#: pipelined requests parsed ahead of the one being answered before reading pauses
_MAX_PIPELINED = 8

Handler = Callable[["Request"], Awaitable["Response | StreamResponse"]]


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_body_bytes: int
    body_read_timeout_s: float
    header_read_timeout_s: float
    #: client connections served at once; one more gets a 503 and is closed
    max_connections: int = 4096


class ConnectionHost(Protocol):
    """What a connection needs from its server (``server.HttpServer``)."""

    loop: asyncio.AbstractEventLoop
    limits: ServerLimits
    handler: Handler
    date_line: bytes

    def admit_connection(self, conn: ClientConnection) -> bool: ...

    def connection_closed(self, conn: ClientConnection) -> None: ...

    def status_line(self, status: int, reason: str | None) -> bytes: ...


class ClientConnection(ConnectionClosing):
    """One client connection: parses requests, runs the handler, writes the answers.

    Implements ``messages.Channel`` (``flow``, ``limits``, ``local_port``, ``write``,
    ``writelines``, ``start_stream``, ``abort``) for its requests and ``request_parser.ParserSink``
    for its parser.
    """

    def __init__(self, server: ConnectionHost):
        self.server = server
        self.loop = server.loop
        self.limits = server.limits
        self.handler = server.handler
        self.parser = RequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.flow: FlowControl = None  # type: ignore[assignment]
        self.state = ConnState.IDLE
        self.local_port = 0
        #: since when the connection has waited on the client: for a request head, or to take
        #: answers already written (None: neither)
        self.idle_since: float | None = None
        self._held = b""  # read but not parsed yet: reading paused in the middle of a read
        self._parsing: Request | None = None  # the request whose body is being parsed
        self._current: Request | None = None  # the request being answered
        self._task: asyncio.Task[None] | None = None
        self._pipeline: deque[Request] = deque()
        self._refusal: ProxyError | None = None  # answered once the pipeline is through

    @property
    def answer_task(self) -> asyncio.Task[None] | None:
        """The handler task of the request being answered, if any."""
        return self._task

    # -- asyncio protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flow = FlowControl(self.transport)
        self.write = self.transport.write  # type: ignore[method-assign]
        self.writelines = self.transport.writelines  # type: ignore[method-assign]
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            self.local_port = sockname[1]
        if not self.server.admit_connection(self):
            self._refuse(TooManyConnections(
                "the proxy is serving as many connections as it is configured for; retry "
                "shortly", retry_after_s=1.0))
            return
        self.idle_since = self.loop.time()

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state not in READING and (state is not ConnState.MUST_CLOSE or self._parsing is None):
            return  # nothing more is read (a body still arriving while draining is)
        if self._held or self.flow.read_paused:
            self._held += data
            return
        if len(data) <= FEED_SLICE:
            self.parser.feed(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), FEED_SLICE):
            if self.state not in READING and self._parsing is None:
                return
            if self.flow.read_paused:
                self._held = bytes(view[start:])
                return
            self.parser.feed(view[start:start + FEED_SLICE])

    def eof_received(self) -> bool | None:
        return None  # a half-closed client is gone: close (and cancel its handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = ConnState.CLOSED
        self.flow.connection_lost()
        self.server.connection_closed(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._pipeline.clear()
        self._held = b""

    def pause_writing(self) -> None:
        self.flow.pause_writing()
        if self._parsing is None:  # a body being read keeps coming, or its handler waits
            self.flow.pause_reading(ReadPause.OUTPUT)

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        if self.flow.paused_for(ReadPause.OUTPUT):
            if self._current is None and self.state in (ConnState.ACTIVE, ConnState.MUST_CLOSE,
                                                         ConnState.ERROR):
                self._next()  # an answer was done while the client was not reading
            if not self.flow.write_paused:
                self._resume(ReadPause.OUTPUT)

    def _resume(self, reason: ReadPause) -> None:
        """Reading resumes for ``reason``; what was held back of the last read comes first."""
        self.flow.resume_reading(reason)
        if self._held and not self.flow.read_paused:
            held, self._held = self._held, b""
            self.data_received(held)

    # -- parser callbacks (request_parser.ParserSink) -------------------------------------------

    def head_received(self, method: str, target: str, version: str,
                      headers: CIMultiDict[str], keep_alive: bool,
                      raw_headers: list[tuple[bytes, bytes]]) -> None:
        request = Request(self, method, target, version, headers, keep_alive, raw_headers)
        state = self.state
        if state is ConnState.IDLE:
            self._parsing = request
            self.idle_since = None
            self._move(ConnState.ACTIVE)
            self._start(request)
        elif state is ConnState.ACTIVE:
            self._parsing = request
            self._pipeline.append(request)
            # bodies parsed ahead are read one at a time, bodiless heads _MAX_PIPELINED deep
            if len(self._pipeline) >= _MAX_PIPELINED or request.body_exists:
                self.flow.pause_reading(ReadPause.PIPELINE)
        # else (MUST_CLOSE): a request after the last one taken is not answered

    def body_received(self, data: bytes) -> None:
        request = self._parsing
        if request is not None:
            request.feed_body(data)

    def message_complete(self) -> None:
        request = self._parsing
        if request is not None:
            self._parsing = None
            request.end_body()

    def upgraded(self) -> None:
        """CONNECT or Upgrade (without a body: the parser refuses one): the handler answers
        (CONNECT is refused), then close."""
        if self.state is ConnState.ACTIVE:
            self._move(ConnState.MUST_CLOSE)

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
            if request.started:  # a stream cut short: only closing can tell the client
                self.abort()
                return
            response = Response.for_error(ProxyError("internal error in llm-throttle"))
        if self.state is ConnState.CLOSED:
            return
        if isinstance(response, StreamResponse):
            response.finish()
        elif not request.started:
            self._write_whole(request, response)
        self._done(request)

    def _done(self, request: Request) -> None:
        self._current = None
        self._task = None
        if self.state is ConnState.CLOSED:
            return
        if not request.keep_alive:
            self._close()  # flushes what was written first
        elif not request.body_complete:  # answered before its body came (413, 401 ...)
            self._linger()
        else:
            self._next()

    def _next(self) -> None:
        """After an answer: the next request parsed ahead, the refusal due, close, or idle;
        nothing while the client has not taken the output (``resume_writing`` calls again)."""
        flow = self.flow
        if flow.write_paused:
            flow.pause_reading(ReadPause.OUTPUT)
            self.idle_since = self.loop.time()  # waiting on the client again
            return
        if self._pipeline:
            self.idle_since = None
            self._start(self._pipeline.popleft())
            if flow.paused_for(ReadPause.PIPELINE) and len(self._pipeline) < _MAX_PIPELINED \
                    and not any(r.body_exists for r in self._pipeline):
                self._resume(ReadPause.PIPELINE)
        elif self._refusal is not None:
            self._write_error(self._refusal)
            self._linger()
        elif self.state is not ConnState.ACTIVE:
            self._close()
        else:
            self._move(ConnState.IDLE)
            self.idle_since = self.loop.time()

    def _last_answer(self, request: Request) -> bool:
        if not request.keep_alive:
            return True
        return self.state is not ConnState.ACTIVE and not self._pipeline and \
            self._refusal is None

    def _head(self, request: Request, status: int, reason: str | None,
              headers: bytes | Iterable[tuple[str, str]], framing: bytes) -> bytes:
        request.started = True
        return answer_head(self.server.status_line(status, reason), headers, framing,
                           connection_header(last=self._last_answer(request),
                                             version=request.version),
                           self.server.date_line)

    def _write_whole(self, request: Request, response: Response) -> None:
        body = response.body
        framing, send_body = whole_framing(request.method, response.status, len(body))
        head = self._head(request, response.status, response.reason, response.headers, framing)
        if not send_body or not body:
            self.transport.write(head)
        elif len(body) < ONE_WRITE_MAX:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))

    def _write_error(self, error: ProxyError) -> None:
        """An error answer that is the connection's last (``Connection: close``)."""
        request = Request(self, "GET", "/", "1.1", CIMultiDict(), False, [])
        self._write_whole(request, Response.for_error(error))

    def start_stream(self, request: Request, status: int, reason: str | None,
                     headers: bytes | Iterable[tuple[str, str]],
                     defer_head: bool) -> StreamResponse:
        if self.flow.lost:
            raise ConnectionResetError("the client closed the connection")
        chunked, silent = stream_framing(request.method, status, request.version)
        if not chunked and not silent:
            request.keep_alive = False  # an HTTP/1.0 body ends when the connection does
        response = StreamResponse(self, status, chunked, silent,
                                  self._head(request, status, reason, headers,
                                             stream_framing_header(chunked)))
        if not defer_head:
            response.send_head()
        return response

    def parse_failed(self, error: ProxyError) -> None:
        """The rest of the input is unreadable: answer what was parsed before it, then the
        error (or the request whose body broke answers it), then close."""
        if self.state is ConnState.CLOSED:
            return
        self._move(ConnState.ERROR)
        self._held = b""
        request = self._parsing
        if request is not None and not request.body_complete:
            request.fail_body(error)  # its handler reads the body and answers with the error
            return
        if self._current is None and not self._pipeline:
            self._write_error(error)
            self._linger()
        else:
            self._refusal = error

    def _refuse(self, error: ProxyError) -> None:
        """Over ``max_connections``: a 503, and close once the client had time to read it."""
        self._move(ConnState.ERROR)
        self._write_error(error)
        self._linger()
