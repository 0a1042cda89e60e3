"""Request heads and bodies out of a byte stream: llhttp (``httptools``) plus the proxy's bounds.

llhttp checks the grammar (and refuses CL+TE, duplicate Content-Length, bad chunk sizes,
obs-fold, bare LF, spaces before a colon ...); this module bounds what llhttp would
otherwise accept or hold without limit, and turns every refusal into an OpenAI-shaped error
for ``ParserSink.parse_failed``:

- request target over 8 KiB: 414 ``target_too_long``;
- over 128 headers, one header over 16 KiB, a head over 64 KiB (names, values and target,
  however many reads it came in): 431;
- a head still incomplete after ``MAX_HEAD_BYTES`` plus one feed: 431 (what llhttp holds of a
  partial header is bounded even before the head ends);
- a request line other than HTTP/1.0 or HTTP/1.1: 505;
- where llhttp is laxer than RFC 9112 (found by the differential test against h11,
  ``tests/test_front_differential.py``): a ``Transfer-Encoding`` other than exactly
  ``chunked`` (llhttp takes ``gzip, chunked`` and hands over the still gzip-coded body), an
  HTTP/1.1 request without ``Host`` or with several (RFC 9112 3.2: 400), and trailing
  whitespace of a value (RFC 9110 5.5: not part of it; ``Bearer k `` must not differ from
  ``Bearer k``) is stripped before anyone reads or forwards it;
- an Upgrade request with a body (llhttp stops before the body): 400;
- an HTTP/1.0 request with ``Transfer-Encoding`` is served, then the connection closes
  (RFC 9112 6.1: its framing is suspect);
- a chunked body whose wire bytes exceed twice its data plus ``FRAMING_ALLOWANCE`` (chunk
  extensions are skipped by llhttp, unbounded): 413 ``chunk_framing_too_large``.

Anything else llhttp refuses is 400 ``invalid_http``. After a failure nothing more may be fed.
"""

from __future__ import annotations

import logging
from typing import Protocol

import httptools
from multidict import CIMultiDict

from .errors import (
    BadRequest,
    BodyTooLarge,
    HeadTooLarge,
    ProxyError,
    TargetTooLong,
    VersionNotSupported,
)

log = logging.getLogger("llm_throttle.server")

MAX_TARGET_BYTES = 8192
MAX_HEADER_BYTES = 16384
MAX_HEADERS = 128
MAX_HEAD_BYTES = 65536
#: the largest piece ``feed`` should be given (the server slices its reads to this)
FEED_SLICE = 65536
#: a chunked body's wire bytes may exceed twice its data by this much (head, chunk sizes and
#: extensions, CRLFs): a 20 MB chunk extension is refused, 16-byte chunks are fine
FRAMING_ALLOWANCE = MAX_HEAD_BYTES + FEED_SLICE
_OWS = (b" ", b"\t")
_METHODS = {m: m.decode() for m in (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS",
                                     b"PATCH")}


class ParserSink(Protocol):
    """Where parsed requests go (the server's connection)."""

    def head_received(self, method: str, target: str, version: str,
                      headers: CIMultiDict[str], keep_alive: bool,
                      raw_headers: list[tuple[bytes, bytes]]) -> None: ...

    def body_received(self, data: bytes) -> None: ...

    def message_complete(self) -> None: ...

    def parse_failed(self, error: ProxyError) -> None: ...

    def upgraded(self) -> None: ...


class _HeadRejected(Exception):
    def __init__(self, error: ProxyError):
        super().__init__(error.message)
        self.error = error


class RequestParser:
    """One connection's parser: ``feed`` bytes, the sink is called back as requests appear."""

    def __init__(self, sink: ParserSink):
        self._sink = sink
        self._parser = httptools.HttpRequestParser(self)
        self._url: list[bytes] = []
        self._url_bytes = 0
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._feed_size = 0  # of the feed being parsed
        self._head_wire = 0  # bytes fed while the head being parsed was incomplete
        self._chunked = False  # a chunked body is being parsed
        self._body_bytes = 0  # its data so far
        self._body_wire = 0  # bytes fed while it was incomplete

    def feed(self, data: bytes | memoryview) -> None:
        """Parse ``data`` (at most ``FEED_SLICE`` bytes for the bounds to be tight)."""
        self._feed_size = len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _HeadRejected):
                self._sink.parse_failed(cause.error)
            else:  # a bug in a callback
                log.error("HTTP parser callback failed", exc_info=cause)
                self._sink.parse_failed(BadRequest("malformed HTTP request",
                                                   code="invalid_http"))
        except httptools.HttpParserUpgrade:
            # CONNECT or an Upgrade header: the head (and any body) came; nothing after it
            # is HTTP/1.1 any more.
            self._sink.upgraded()
        except httptools.HttpParserError as exc:
            if str(exc) == "Invalid HTTP version":
                self._sink.parse_failed(VersionNotSupported(
                    "only HTTP/1.0 and HTTP/1.1 are served"))
            else:
                self._sink.parse_failed(BadRequest(f"malformed HTTP request: {exc}",
                                                   code="invalid_http"))
        else:
            if self._url:  # a head still arriving: bound what llhttp holds of it
                self._head_wire += len(data)
                if self._head_wire > MAX_HEAD_BYTES + FEED_SLICE:
                    self._sink.parse_failed(HeadTooLarge(
                        f"request head over {MAX_HEAD_BYTES} bytes"))
            elif self._chunked:
                self._body_wire += len(data)
                if self._body_wire > 2 * self._body_bytes + FRAMING_ALLOWANCE:
                    self._sink.parse_failed(BodyTooLarge(
                        "chunked body framing (chunk sizes and extensions) is over "
                        f"{FRAMING_ALLOWANCE} bytes more than its data",
                        code="chunk_framing_too_large"))

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._url_bytes += len(url)
        if self._url_bytes > MAX_TARGET_BYTES:
            raise _HeadRejected(TargetTooLong(f"request target over {MAX_TARGET_BYTES} bytes"))

    def on_header(self, name: bytes, value: bytes) -> None:
        if value.endswith(_OWS):  # llhttp strips leading whitespace, not trailing
            value = value.rstrip(b" \t")
        self._raw_headers.append((name, value))  # limits: on_headers_complete

    def _check_head_limits(self) -> None:
        raw = self._raw_headers
        if len(raw) > MAX_HEADERS:
            raise _HeadRejected(HeadTooLarge(f"more than {MAX_HEADERS} request headers",
                                             code="too_many_headers"))
        for name, value in raw:
            if len(name) + len(value) > MAX_HEADER_BYTES:
                raise _HeadRejected(HeadTooLarge(
                    f"a request header is over {MAX_HEADER_BYTES} bytes",
                    code="header_too_large"))
        size = self._url_bytes + sum([len(n) + len(v) + 4 for n, v in raw])
        if size > MAX_HEAD_BYTES:
            raise _HeadRejected(HeadTooLarge(f"request head over {MAX_HEAD_BYTES} bytes"))

    def on_headers_complete(self) -> None:
        # a head that came within one feed of at most 16 KiB is within the size limits; only
        # a bigger feed, or a head that spanned feeds, is measured
        if self._feed_size > MAX_HEADER_BYTES or self._head_wire or \
                len(self._raw_headers) > MAX_HEADERS:
            self._check_head_limits()
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _HeadRejected(VersionNotSupported(
                f"HTTP/{version[:8]} is not served; use HTTP/1.1"))
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("latin-1")
        url = self._url
        target = (url[0] if len(url) == 1 else b"".join(url)).decode("utf-8", "surrogateescape")
        raw_headers = self._raw_headers
        headers: CIMultiDict[str] = CIMultiDict(
            [(n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in raw_headers])
        # ready for the next head (no on_message_begin callback: one call less per request)
        self._url = []
        self._url_bytes = 0
        self._raw_headers = []
        self._head_wire = 0
        keep_alive = parser.should_keep_alive()
        coding = headers.get("Transfer-Encoding")
        self._chunked = coding is not None
        if coding is not None:
            if coding.lower() != "chunked":  # llhttp checked that chunked comes last
                raise _HeadRejected(BadRequest(
                    "only 'Transfer-Encoding: chunked' is supported",
                    code="unsupported_transfer_encoding"))
            if version == "1.0":
                keep_alive = False
        if parser.should_upgrade() and (coding is not None or
                                        headers.get("Content-Length", "0") != "0"):
            # llhttp stops at an Upgrade head and would leave the body unparsed
            raise _HeadRejected(BadRequest("protocol upgrades are not supported",
                                           code="upgrade_not_supported"))
        if version == "1.1" and len(headers.getall("Host", ())) != 1:
            raise _HeadRejected(BadRequest("an HTTP/1.1 request needs exactly one Host header",
                                           code="invalid_host"))
        self._body_bytes = 0
        self._body_wire = 0
        self._sink.head_received(method, target, version, headers, keep_alive, raw_headers)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        self._sink.body_received(body)

    def on_message_complete(self) -> None:
        self._chunked = False
        self._sink.message_complete()
