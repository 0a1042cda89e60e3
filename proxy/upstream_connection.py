"""One keep-alive connection to an upstream: exactly one final response per request.

Theory of operation. An ``UpstreamConnection`` is an asyncio protocol that serves one request
at a time; ``Exchange`` says where it is, and every parser callback first asks that::

    IDLE --send--> AWAITING --1xx head--> INTERIM --its end--> AWAITING   (1xx skipped)
                   AWAITING --final head--> BODY --end of message--> DONE --finish--> IDLE
    any state --error, leftover bytes, reset, timeout, abort--> CLOSED

Only the final head of the exchange becomes the ``UpstreamResponse``: interim answers (100,
102, 103 Early Hints) are read and dropped, trailers never join the headers, and anything
after the final message -- a second response, garbage, a byte on an idle connection -- is
never parsed into an answer: the parser is stopped at the first such byte and the connection
is closed instead of pooled. That is what keeps one client's bytes from reaching another on a
reused connection. A body delimited by the connection closing ends cleanly only on a FIN; a
reset cuts it (the relay then ends the stream with an error event).

Bounds: the head (all interim heads and the final one) is at most ``MAX_HEAD_BYTES`` and
``MAX_HEADERS`` fields; a body read whole (``UpstreamResponse.read``, not pumped to a
client) is at most ``max_body_bytes``. Past either the exchange fails with a 502 and the
connection closes, so the proxy never holds more than one read beyond the bound.

The body of the final answer goes to an ``ArrivingBody`` (``proxy/upstream_body.py``): queued
for ``read``, or handed to a relay's sink from the parser callback itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import httptools
from multidict import CIMultiDict

from .errors import UpstreamError, UpstreamTimeout
from .flow_control import FlowControl, ReadPause
from .upstream_body import ArrivingBody
from .upstream_framing import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_INTERIM,
    Exchange,
    Framing,
    announces_forbidden_body,
    body_framing,
    framing_doubt,
)
from .upstream_response import UpstreamResponse

log = logging.getLogger("llm_throttle.upstream")


class StaleConnection(Exception):
    """A reused connection closed after the request was written, before any answer byte."""


class _StopParsing(Exception):
    """Raised in a parser callback to stop at a byte that belongs to no exchange."""


class ConnectionOwner(Protocol):
    """What a connection needs from its pool."""

    name: str
    loop: asyncio.AbstractEventLoop
    max_body_bytes: int

    def put_back(self, conn: UpstreamConnection) -> None: ...

    def forget(self, conn: UpstreamConnection) -> None: ...

    def closed_by_upstream(self, conn: UpstreamConnection) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream, serving one request at a time."""

    def __init__(self, owner: ConnectionOwner):
        self.owner = owner
        self.loop = owner.loop
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.state = Exchange.IDLE
        #: at least one exchange ended cleanly on it (a close before answering may be stale)
        self.reused = False
        #: when it went back to the pool (idle connections expire)
        self.idle_since = 0.0
        #: how the body of its last final answer was delimited (``proxy/upstream_reuse.py``)
        self.framing = Framing.NONE
        self._expect_no_body = False
        self._reset()

    def _reset(self) -> None:
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[UpstreamResponse] | None = None
        #: the body of this exchange's final answer (``UpstreamResponse`` reads it)
        self.body = ArrivingBody(self.loop, self.flow)
        self._head_bytes = 0  # bytes received while no final head was complete
        self._header_bytes = 0  # header fields, over the interim heads and the final one
        self._interim = 0
        self._got_bytes = False
        self._stop: Exception | None = None  # why a callback stopped the parser
        self._keep_alive = True
        self._eof_body = False
        #: when bytes last came (or the request went out): the pool's sweep times out silence
        self.last_activity = 0.0

    @property
    def closed(self) -> bool:
        return self.state is Exchange.CLOSED

    # -- asyncio protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flow = FlowControl(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is Exchange.IDLE or state is Exchange.DONE:
            # Unsolicited bytes (idle) or bytes after the message: never an answer.
            self._close_leftover(state)
            return
        if state is Exchange.CLOSED:
            return
        self._got_bytes = True
        self.last_activity = self.loop.time()
        head_pending = state is not Exchange.BODY
        if head_pending:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            stop = self._stop
            if stop is None:  # a bug in a callback
                log.error("upstream response handling failed", exc_info=exc.__context__)
                self._fail(self._bad(f"upstream '{self.owner.name}' response could not be "
                                     "relayed"))
            elif isinstance(stop, _StopParsing):
                self._close_leftover(self.state)
            else:
                self._fail(stop)
            return
        except httptools.HttpParserUpgrade:
            self._fail(self._bad(f"upstream '{self.owner.name}' tried to switch protocols"))
            return
        except httptools.HttpParserError:
            if self.state is Exchange.DONE:
                self._close_leftover(Exchange.DONE)  # garbage after a complete answer
            else:
                self._fail(self._bad(f"upstream '{self.owner.name}' sent a malformed response"))
            return
        if head_pending and self.state in (Exchange.AWAITING, Exchange.INTERIM) \
                and self._head_bytes > MAX_HEAD_BYTES:
            self._fail(self._too_large(f"a response head over {MAX_HEAD_BYTES} bytes"))

    def eof_received(self) -> None:
        if self.state is Exchange.IDLE and self.reused:
            self.owner.closed_by_upstream(self)  # the earliest sign: before connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        if self.reused and (state is Exchange.IDLE or (
                state is Exchange.AWAITING and not self._got_bytes)):
            self.owner.closed_by_upstream(self)  # idle, or under a request it never answered
        self.state = Exchange.CLOSED
        if self.flow is not None:
            self.flow.connection_lost()
        self.owner.forget(self)
        if state is Exchange.BODY:
            if self._eof_body and exc is None:
                self._message_done()  # a body delimited by the connection closing (a FIN)
            elif self._eof_body:
                self._fail(UpstreamError(
                    f"upstream '{self.owner.name}' reset the connection mid-response"))
            else:
                self._fail(UpstreamError(
                    f"upstream '{self.owner.name}' closed the connection mid-response"))
        elif state is Exchange.AWAITING or state is Exchange.INTERIM:
            if self.reused and not self._got_bytes:
                self._fail(StaleConnection())
            else:
                self._fail(UpstreamError(
                    f"upstream '{self.owner.name}' closed the connection before answering"))

    def pause_writing(self) -> None:  # request bodies are small; nothing to throttle
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.state is not Exchange.AWAITING:  # a second message: not ours to read
            self._stop = _StopParsing()
            raise self._stop

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.state is not Exchange.AWAITING:
            return  # trailers: never headers of the answer
        self._header_bytes += len(name) + len(value) + 4
        self._raw_headers.append((name, value))
        if len(self._raw_headers) > MAX_HEADERS:
            self._stop = self._too_large(f"more than {MAX_HEADERS} response headers")
            raise self._stop
        if self._header_bytes > MAX_HEAD_BYTES:  # also when the head came in one read
            self._stop = self._too_large(f"a response head over {MAX_HEAD_BYTES} bytes")
            raise self._stop

    def on_headers_complete(self) -> None:
        if self.state is not Exchange.AWAITING:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows
            self._interim += 1
            if status == 101 or self._interim > MAX_INTERIM:
                self._stop = self._bad(
                    f"upstream '{self.owner.name}' sent {self._interim} interim answers"
                    if status != 101 else
                    f"upstream '{self.owner.name}' tried to switch protocols")
                raise self._stop
            self.state = Exchange.INTERIM
            self._raw_headers = []  # the count is per head, the bytes over all of them
            return
        self.state = Exchange.BODY
        self._keep_alive = self.parser.should_keep_alive()
        raw = self._raw_headers
        headers: CIMultiDict[str] = CIMultiDict(
            [(n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in raw])
        doubt = framing_doubt(self.parser.get_http_version(), headers)
        if doubt is not None:
            self._stop = self._bad(f"upstream '{self.owner.name}' sent {doubt}")
            raise self._stop
        self.framing = body_framing(status, headers, self._expect_no_body)
        self._eof_body = self.framing is Framing.CLOSE
        # The reason phrase is not read (no on_status callback): it carries no meaning (RFC
        # 9110 section 15) and the client gets the standard one for the status.
        response = UpstreamResponse(self, self.body, status, "", headers, raw)
        if announces_forbidden_body(status, headers):
            self._keep_alive = False
        if self._expect_no_body:
            # After HEAD a body length may be announced but never sent: don't reuse.
            self._keep_alive = False
            self.state = Exchange.DONE
            self.body.end()
        if self._head is not None and not self._head.done():
            self._head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self.state is not Exchange.BODY:
            return  # bytes after a HEAD answer: dropped (the connection is not reused)
        self.body.feed(body)

    def on_message_complete(self) -> None:
        state = self.state
        if state is Exchange.INTERIM:
            self.state = Exchange.AWAITING
        elif state is Exchange.BODY:
            self._message_done()

    def _message_done(self) -> None:
        if self.state is not Exchange.CLOSED:
            self.state = Exchange.DONE
        self.body.end()

    # -- used by the pool and the response ---------------------------------------------------------

    def send(self, data: bytes, expect_no_body: bool) -> asyncio.Future[UpstreamResponse]:
        """Write one request (the connection must be IDLE and open)."""
        assert self.transport is not None and self.state is Exchange.IDLE
        self._reset()
        self._expect_no_body = expect_no_body
        self._head = head = self.loop.create_future()
        self.state = Exchange.AWAITING
        self.last_activity = self.loop.time()
        self.transport.write(data)
        return head

    @property
    def usable(self) -> bool:
        """Idle and open: a request written now is certainly on a live connection's turn."""
        return (self.state is Exchange.IDLE and self.transport is not None
                and not self.transport.is_closing())

    @property
    def busy(self) -> bool:
        """A request is out and its answer is not complete (the read timeout applies)."""
        return self.state in (Exchange.AWAITING, Exchange.INTERIM, Exchange.BODY)

    @property
    def max_body_bytes(self) -> int:
        return self.owner.max_body_bytes

    def finish(self) -> None:
        """The reader is done: reuse the connection if the exchange ended cleanly."""
        if (self.state is Exchange.DONE and self._keep_alive and self.body.taken_whole
                and self.flow is not None):
            # Reading resumes: whatever arrives now is a leftover and closes the connection.
            self.flow.resume_reading(ReadPause.CONSUMER | ReadPause.BUFFER)
            self._head = None
            self.state = Exchange.IDLE
            self.reused = True
            self.idle_since = self.loop.time()
            self.owner.put_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        if self.transport is not None and self.state is not Exchange.CLOSED:
            self.state = Exchange.CLOSED
            self.transport.abort()  # tells the upstream to stop generating
        self.owner.forget(self)

    def retire(self) -> None:
        """Close a connection whose exchange ended cleanly (a FIN, not a reset)."""
        if self.transport is not None and self.state is not Exchange.CLOSED:
            self.state = Exchange.CLOSED
            self.transport.close()
        self.owner.forget(self)

    def _close_leftover(self, state: Exchange) -> None:
        """Bytes that belong to no exchange: the answer (if any) stands, the connection goes."""
        if state is Exchange.DONE or state is Exchange.IDLE:
            log.debug("upstream '%s' sent bytes outside an exchange; closing", self.owner.name)
        self._keep_alive = False
        self.abort()

    def _fail(self, error: Exception) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self.body.fail(error)
        self.abort()

    def _bad(self, message: str) -> UpstreamError:
        return UpstreamError(message, code="upstream_bad_response")

    def _too_large(self, what: str) -> UpstreamError:
        return UpstreamError(f"upstream '{self.owner.name}' sent {what}",
                             code="upstream_response_too_large")

    def body_too_large(self, limit: int) -> UpstreamError:
        """A body read whole went past ``limit``: the connection goes (502 for the client)."""
        self.abort()
        return self._too_large(f"a response body over {limit} bytes")

    def time_out(self, read_timeout: float) -> None:
        where = "mid-response" if self.state is Exchange.BODY else "before answering"
        self._fail(UpstreamTimeout(
            f"upstream '{self.owner.name}' sent nothing for {read_timeout:g}s {where}"))
