"""What the HTTP server (``proxy/server.py``) hands its handler and takes back: the request,
with its body read on demand, and the two kinds of answer (whole, or streamed).

The body is read whole and bounded: ``max_body_bytes`` before and after inflating a gzip or
deflate body (a zip bomb stops at the limit), ``body_read_timeout_s`` for it to arrive.

A request and its answer reach their connection only through ``Channel``, a narrow interface
this module declares and the server implements (as uvicorn's ``RequestResponseCycle`` talks to
its protocol): write bytes, wait for the client to take them, start a stream. Nothing here
imports the server; the server feeds the request through its public ``feed_body`` /
``end_body`` / ``fail_body``.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterable
from typing import Protocol
from urllib.parse import parse_qsl, unquote

from multidict import CIMultiDict

from .errors import BadRequest, BodyTooLarge, ProxyError, RequestTimeout, UnsupportedEncoding
from .flow_control import FlowControl

#: answers that have a head and never a body
NO_BODY_STATUS = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
               "deflate": zlib.MAX_WBITS}


class BodyLimits(Protocol):
    """The server's bounds on a request body."""

    @property
    def max_body_bytes(self) -> int: ...

    @property
    def body_read_timeout_s(self) -> float: ...


class Channel(Protocol):
    """What a request and its answer may do with their connection, and nothing more."""

    #: backpressure: ``flow.lost``, ``flow.write_paused``, ``await flow.drain()``
    flow: FlowControl
    limits: BodyLimits
    local_port: int

    def write(self, data: bytes) -> None: ...

    def writelines(self, parts: Iterable[bytes]) -> None: ...

    def start_stream(self, request: Request, status: int, reason: str | None,
                     headers: bytes | Iterable[tuple[str, str]],
                     defer_head: bool) -> StreamResponse: ...

    def abort(self, reset: bool = False) -> None: ...


class Response:
    """A whole answer, written in one go."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(self, status: int = 200, body: bytes = b"",
                 headers: bytes | Iterable[tuple[str, str]] = (), reason: str | None = None):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    @classmethod
    def text(cls, text: str, status: int = 200,
             content_type: str = "text/plain; charset=utf-8") -> Response:
        return cls(status, text.encode(), [("Content-Type", content_type)])

    @classmethod
    def json_bytes(cls, body: bytes, status: int = 200,
                   headers: Iterable[tuple[str, str]] = ()) -> Response:
        return cls(status, body, [("Content-Type", "application/json"), *headers])

    @classmethod
    def for_error(cls, exc: ProxyError) -> Response:
        return cls.json_bytes(exc.to_bytes(), exc.status, exc.headers().items())


class StreamResponse:
    """An answer written as it is produced (chunked for HTTP/1.1 clients).

    The head may be held back (``defer_head``) to leave with the first bytes of the body in
    one write: a stream whose body is already there costs one write, not two.
    """

    __slots__ = ("_chunked", "_conn", "_flow", "_head", "_silent", "finished", "status")

    def __init__(self, conn: Channel, status: int, chunked: bool, silent: bool, head: bytes):
        self.status = status
        self._conn = conn
        self._flow = conn.flow
        self._chunked = chunked
        self._silent = silent  # HEAD, 204, 304: a head and no body
        self._head = head  # not written yet (b"" once it is)
        self.finished = False

    def send_head(self) -> None:
        """Write a held-back head now (the body will take a while)."""
        if self._head and not self._flow.lost:
            self._conn.write(self._head)
            self._head = b""

    def write(self, data: bytes) -> bool:
        """Queue ``data`` on the socket; False when the client's buffer is full (await
        ``drain``). Raises ConnectionResetError once the client is gone."""
        flow = self._flow
        if flow.lost:
            raise ConnectionResetError("the client closed the connection")
        if data and not (self._silent or self.finished):
            head, self._head = self._head, b""
            if self._chunked:
                self._conn.writelines((head, b"%x\r\n" % len(data), data, b"\r\n"))
            elif head:
                self._conn.writelines((head, data))
            else:
                self._conn.write(data)
        return not flow.write_paused

    async def drain(self) -> None:
        await self._flow.drain()

    def finish(self, tail: bytes = b"") -> None:
        """The end of the body (``tail``, then the zero-length chunk, in one write with the head
        if it was held back); a no-op after the client left or once finished."""
        if self.finished:
            return
        self.finished = True
        conn = self._conn
        if self._flow.lost:
            return
        head, self._head = self._head, b""
        if self._silent or not (tail or self._chunked):
            if head:
                conn.write(head)
        elif not self._chunked:
            conn.writelines((head, tail))
        elif tail:
            conn.writelines((head, b"%x\r\n" % len(tail), tail, b"\r\n0\r\n\r\n"))
        else:
            conn.writelines((head, b"0\r\n\r\n"))

    def abort(self) -> None:
        """The body cannot be completed (its source was cut after the head went): drop the
        client's connection without the end of the body, so the client sees it incomplete,
        never whole: a chunked body lacks its last chunk, and a body that ends at the close
        (HTTP/1.0) ends with a reset. A no-op once finished."""
        if self.finished:
            return
        self.finished = True
        if not self._flow.lost:
            self._conn.abort(reset=not (self._chunked or self._silent))


class Request:
    """One request: its head at once, its body on demand (``read_body``)."""

    __slots__ = (
        "_conn",
        "_error",
        "_overflow",
        "_parts",
        "_waiter",
        "body_complete",
        "body_size",
        "chunked",
        "client_label",
        "content_length",
        "headers",
        "keep_alive",
        "local_port",
        "method",
        "model_label",
        "path",
        "query_string",
        "raw_headers",
        "started",
        "target",
        "version",
    )

    def __init__(self, conn: Channel, method: str, target: str, version: str,
                 headers: CIMultiDict[str], keep_alive: bool,
                 raw_headers: list[tuple[bytes, bytes]]):
        self.method = method
        self.target = target
        raw_path, _, self.query_string = target.partition("?")
        self.path = unquote(raw_path) if "%" in raw_path else raw_path
        self.version = version
        self.headers = headers
        #: as received (names and values checked by llhttp): forwarded without re-encoding
        self.raw_headers = raw_headers
        self.keep_alive = keep_alive
        self.local_port = conn.local_port
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None else None  # llhttp checked it
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.model_label = "-"
        self.client_label = "-"
        #: the answer's head has been written (an error can no longer be answered)
        self.started = False
        #: the whole body has arrived
        self.body_complete = False
        #: body bytes received so far (as sent, before decompression)
        self.body_size = 0
        self._conn = conn
        self._parts: list[bytes] = []
        self._overflow = False
        self._error: ProxyError | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def body_exists(self) -> bool:
        return bool(self.content_length) or self.chunked

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string))

    async def read_body(self) -> bytes:
        """The whole body, decompressed; raises 413 / 408 / 400 / 415 as a ProxyError."""
        limits = self._conn.limits
        if self.content_length is not None and self.content_length > limits.max_body_bytes:
            raise BodyTooLarge(f"request body of {self.content_length} bytes is over the "
                               f"{limits.max_body_bytes}-byte limit")
        if not self.body_complete and self._error is None and not self._overflow:
            # RFC 9110 10.1.1: no 100 (Continue) to an HTTP/1.0 client, which cannot expect it
            if self.version != "1.0" and not self._conn.flow.lost and \
                    self.headers.get("Expect", "").lower() == "100-continue":
                self._conn.write(_CONTINUE)
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(limits.body_read_timeout_s):
                    while not (self.body_complete or self._error or self._overflow):
                        self._waiter = loop.create_future()
                        await self._waiter
            except TimeoutError:
                raise RequestTimeout(f"request body not received within "
                                     f"{limits.body_read_timeout_s:g}s") from None
            finally:
                self._waiter = None
        if self._overflow:
            raise BodyTooLarge(f"request body is over the {limits.max_body_bytes}-byte limit")
        if self._error is not None:
            raise self._error
        parts = self._parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        encoding = self.headers.get("Content-Encoding")
        if encoding is not None and body:
            body = _decoded(body, encoding.strip().lower(), limits.max_body_bytes)
        return body

    def start_stream(self, status: int, reason: str | None,
                     headers: bytes | Iterable[tuple[str, str]], *,
                     defer_head: bool = False) -> StreamResponse:
        """Write the head (now, or with the first body bytes when ``defer_head``); the body
        follows with ``write`` and ``finish``."""
        return self._conn.start_stream(self, status, reason, headers, defer_head)

    # -- fed by the connection ----------------------------------------------------------------

    def feed_body(self, data: bytes) -> None:
        """Body bytes as they arrive; past ``max_body_bytes`` they are dropped (413)."""
        if self._overflow:
            return
        self.body_size += len(data)
        if self.body_size > self._conn.limits.max_body_bytes:
            self._overflow = True
            self._parts.clear()
            self._wake()
        else:
            self._parts.append(data)

    def end_body(self) -> None:
        self.body_complete = True
        self._wake()

    def fail_body(self, error: ProxyError) -> None:
        """The body cannot be read (bad framing, over a bound): ``read_body`` raises it."""
        self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _decoded(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip/deflate body inflated, refusing one that inflates past ``limit`` (zip bombs)."""
    if encoding == "identity":
        return body
    wbits = _ZLIB_WBITS.get(encoding)
    if wbits is None:
        raise UnsupportedEncoding(f"Content-Encoding '{encoding[:40]}' is not supported; send "
                                  "the body as identity, gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
        if not inflater.eof:
            if len(out) > limit:
                raise BodyTooLarge(f"request body is over the {limit}-byte limit once "
                                   f"decompressed")
            raise zlib.error("truncated stream")
    except zlib.error:
        if encoding == "deflate" and wbits == zlib.MAX_WBITS:
            return _raw_deflate(body, limit)
        raise BadRequest(f"request body is not valid {encoding}", code="invalid_body") from None
    return out


def _raw_deflate(body: bytes, limit: int) -> bytes:
    """``deflate`` sent without its zlib wrapper (some clients do): one more try."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise BadRequest("request body is not valid deflate", code="invalid_body") from None
    if not inflater.eof:
        if len(out) > limit:
            raise BodyTooLarge(f"request body is over the {limit}-byte limit once decompressed")
        raise BadRequest("request body is not valid deflate", code="invalid_body")
    return out
