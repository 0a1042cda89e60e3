"""Talking to upstreams: headers in and out, one request, the response relayed as it arrives.

Bytes pass through untouched (no decompression, no re-chunking of content): a streamed
response is written to the client chunk by chunk as the upstream sends it. Hop-by-hop headers
are dropped both ways (RFC 9110 section 7.6.1), the client's credentials never reach the
upstream, and the upstream's own key is injected here and nowhere else.

``Forwarder.exchange`` is one admitted request's whole transport part: send, time the head,
note an upstream failure or throttling answer, relay (``relay_answer``: SSE, NDJSON and bodies
of unknown length as they arrive, with the usage tap of the route family; others whole), all
written into a ``RelayOutcome`` that the request path turns into its record.

Peer disconnection: a client that goes away cancels its handler (``proxy/server.py``); the
``async with`` around the upstream response then closes that connection, which tells the
upstream to stop generating.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from .config import UpstreamConfig
from .errors import ProxyError
from .families import UsageMarkers
from .messages import Request, Response, StreamResponse
from .tokens import UsageTap, tap_for, usage_from_body
from .upstream import UpstreamPool, UpstreamResponse

HOP_BY_HOP = frozenset(
    h.lower().encode()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Trailers", "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
        "Expect",  # the proxy reads the whole body itself; the upstream must not wait for it
    )
)
#: the client's credentials for the proxy; never forwarded
CLIENT_CREDENTIALS = frozenset({b"authorization", b"api-key", b"x-api-key"})
#: the server hands over request bodies decompressed: forward them as such
_REQUEST_DROP = HOP_BY_HOP | CLIENT_CREDENTIALS | {b"content-encoding"}
#: admitted calls are read for usage on the way back: the proxy sets Accept-Encoding itself
_REQUEST_DROP_IDENTITY = _REQUEST_DROP | {b"accept-encoding"}
#: the server writes its own Date on every answer: the upstream's would make two (RFC 9110
#: section 6.6.1 allows one)
_RESPONSE_DROP = HOP_BY_HOP | {b"content-length", b"date"}
#: how long admission made the request wait (ms): lets clients and load tests separate queue
#: time from service time; the proxy's own, replacing any an upstream sent
QUEUE_MS_HEADER = b"x-llm-throttle-queue-ms"
_RESPONSE_DROP_OWN = _RESPONSE_DROP | {QUEUE_MS_HEADER}
_SSE_DONE = (b"data: [DONE]\n\n", b"data: [DONE]\r\n\r\n", b"data:[DONE]\n\n")
#: bodies relayed as events or lines as they arrive, whatever their framing
STREAM_TYPES = ("text/event-stream", "application/x-ndjson", "application/jsonl",
                "application/json-seq")


def _connection_listed(raw_headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names that the sender's ``Connection`` headers mark as hop-by-hop."""
    return frozenset(
        token.strip().lower()
        for name, value in raw_headers if name.lower() == b"connection"
        for token in value.split(b",") if token.strip()
    )


def _kept(raw_headers: list[tuple[bytes, bytes]], dropped: frozenset[bytes],
          has_connection: bool) -> list[tuple[bytes, bytes]]:
    if has_connection:
        dropped = dropped | _connection_listed(raw_headers)
    return [(name, value) for name, value in raw_headers if name.lower() not in dropped]


def upstream_request_headers(request: Request, injected: bytes, *,
                             identity_encoding: bool) -> bytes:
    """What the upstream sees, as header lines: the client's headers less hop-by-hop and
    credentials, plus ``injected`` (the upstream's own key, ``Forwarder.injected``). Bytes
    pass through as the client sent them (llhttp has checked them), so nothing is decoded
    and encoded again."""
    kept = _kept(request.raw_headers,
                 _REQUEST_DROP_IDENTITY if identity_encoding else _REQUEST_DROP,
                 "Connection" in request.headers)
    lines = [b"%s: %s\r\n" % pair for pair in kept]
    lines.append(injected)
    if identity_encoding:
        # Admitted calls are read for their usage on the way back: keep them uncompressed.
        lines.append(b"Accept-Encoding: identity\r\n")
    return b"".join(lines)


def client_response_headers(upstream_response: UpstreamResponse,
                            extra: bytes = b"") -> bytes:
    """What the client sees: the upstream's headers less hop-by-hop, plus ``extra`` lines
    (the proxy's own headers, ``QUEUE_MS_HEADER``)."""
    kept = _kept(upstream_response.raw_headers, _RESPONSE_DROP_OWN if extra else _RESPONSE_DROP,
                 "Connection" in upstream_response.headers)
    return b"".join([b"%s: %s\r\n" % pair for pair in kept]) + extra


@dataclass(slots=True)
class RelayOutcome:
    """What happened on the way back, for token settlement and metrics."""

    status: int = 0
    usage: tuple[int, int] | None = None
    chunks: int = 0  # data events relayed (streams)
    complete: bool = False  # the upstream response ended normally
    first_byte_at: float | None = None
    client_gone: bool = False  # the client disconnected before the end
    upstream_s: float | None = None  # request sent -> response head received
    failure: str | None = None  # why the upstream failed or throttled (error code, "429")


@dataclass(slots=True)  # not frozen: built once per request, and frozen init costs
class Exchange:
    """One admitted request as the upstream is to see it, and what to read on the way back."""

    method: str
    target: str
    headers: bytes
    body: bytes
    extra_headers: bytes  # the proxy's own response headers (``QUEUE_MS_HEADER``)
    usage: UsageMarkers | None  # None: do not read usage (pass-through)
    strip_usage: bool = False


class Forwarder:
    """Connection pools for every upstream, created at start."""

    def __init__(self, upstreams: Mapping[str, UpstreamConfig]):
        self._upstreams = upstreams
        self._pools: dict[str, UpstreamPool] = {}
        #: header lines the proxy adds for each upstream (its key), encoded once
        self.injected: dict[str, bytes] = {
            name: f"Authorization: Bearer {up.api_key}\r\n".encode() if up.api_key else b""
            for name, up in upstreams.items()
        }

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._pools = {
            name: UpstreamPool(up, loop)
            for name, up in self._upstreams.items()
        }

    def pool(self, name: str) -> UpstreamPool:
        """The connection pool of one upstream (status, tests)."""
        return self._pools[name]

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()

    def open(
        self, upstream: UpstreamConfig, method: str, target: str, headers: bytes,
        body: bytes | None,
    ) -> Awaitable[UpstreamResponse]:
        """Send the request; raises UpstreamError (502) or UpstreamTimeout (504)."""
        return self._pools[upstream.name].request(method, target, headers, body)

    async def exchange(self, request: Request, upstream: UpstreamConfig, sent: Exchange,
                       outcome: RelayOutcome, clock: Callable[[], float],
                       ) -> Response | StreamResponse:
        """Send, wait for the head, relay the answer; ``outcome`` says what happened (also when
        this raises: the upstream's failure is in ``outcome.failure``)."""
        started = clock()
        try:
            upstream_response = await self.open(upstream, sent.method, sent.target,
                                                sent.headers, sent.body)
        except ProxyError as exc:
            outcome.failure = exc.code or "error"
            raise
        try:
            outcome.upstream_s = clock() - started
            status = upstream_response.status
            if status == 429 or status == 503:
                outcome.failure = str(status)
            return await relay_answer(request, upstream_response, outcome, clock, sent.usage,
                                      sent.strip_usage, sent.extra_headers)
        finally:
            upstream_response.close()


async def relay_answer(
    request: Request, upstream_response: UpstreamResponse, outcome: RelayOutcome,
    clock: Callable[[], float], usage: UsageMarkers | None, strip_usage: bool = False,
    extra_headers: bytes = b"",
) -> Response | StreamResponse:
    """Events (SSE, NDJSON) and bodies of unknown length are relayed as they arrive, never
    buffered whole; a body already here whole or of known length is passed on in one write.
    With ``usage`` set, usage is read on the way (not from a compressed body)."""
    headers = upstream_response.headers
    content_type = headers.get("Content-Type", "")
    if usage is not None and "Content-Encoding" in headers:
        usage = None  # compressed: nothing to read (admitted calls ask for identity)
    if not content_type.startswith(STREAM_TYPES):
        body = upstream_response.read_now()
        if body is None and "Content-Length" in headers:
            body = await upstream_response.read()
        if body is not None:
            return plain_response(upstream_response, body, outcome, usage, extra_headers)
    tap = tap_for(content_type, usage, strip_usage) if usage is not None else None
    return await relay_stream(request, upstream_response, outcome, tap, clock, extra_headers)


def plain_response(
    upstream_response: UpstreamResponse, body: bytes, outcome: RelayOutcome,
    usage: UsageMarkers | None, extra_headers: bytes = b"",
) -> Response:
    """A non-streamed answer, read whole (``body``), passed on."""
    outcome.status = upstream_response.status
    outcome.complete = True
    if usage is not None and upstream_response.status < 300:
        outcome.usage = usage_from_body(body, usage)
    return Response(upstream_response.status, body,
                    client_response_headers(upstream_response, extra_headers),
                    upstream_response.reason)


async def relay_stream(
    request: Request, upstream_response: UpstreamResponse,
    outcome: RelayOutcome, tap: UsageTap | None, clock: Callable[[], float],
    extra_headers: bytes = b"",
) -> StreamResponse:
    """Relay chunk by chunk. An upstream failure after the head went ends an event stream
    with the SSE error event; any other body (NDJSON, plain) is cut short (``abort``), so
    the client never takes a truncated body for a whole one."""
    outcome.status = upstream_response.status
    failure: ProxyError | None = None
    response = request.start_stream(
        upstream_response.status, upstream_response.reason,
        client_response_headers(upstream_response, extra_headers), defer_head=True)
    if not upstream_response.body_ready:
        response.send_head()  # the body will take a while: the head goes now

    def sink(data: bytes, end: bool) -> bool:
        """Called from the upstream socket callback with body bytes as they arrive; returns
        False to pause the upstream until the client has drained."""
        if tap is not None:
            data = tap.feed(data)
            if end:
                data += tap.flush()
        if data and outcome.first_byte_at is None:
            outcome.first_byte_at = clock()
        try:
            if end or (tap is not None and data.endswith(_SSE_DONE)):
                # The last bytes, or [DONE] (the last event of an OpenAI stream): end the
                # client's body in the same write. A client that stops reading at [DONE] (the
                # SDKs do) otherwise finds the terminating chunk missing and drops its
                # connection; the upstream's own end follows (nothing after it is sent).
                response.finish(data)
                return True
            return response.write(data)
        except ConnectionResetError:
            return False  # the pump's wait (drain) raises it again, in the handler

    try:
        await upstream_response.pump(sink, response.drain)
        if tap is not None and (rest := tap.flush()):
            response.write(rest)
        outcome.complete = True
    except ProxyError as exc:  # the upstream failed (timeout, reset): tell the client in-band
        failure = exc
    except ConnectionResetError:  # the client left mid-stream: nobody to write to any more
        outcome.client_gone = True
        return response
    finally:
        if tap is not None:
            outcome.usage, outcome.chunks = tap.usage, tap.chunks
    try:
        if failure is None:
            response.finish()
        elif upstream_response.headers.get("Content-Type", "").startswith("text/event-stream"):
            response.write(failure.sse_event())  # SSE clients read errors in-band
            response.finish()
        else:
            response.abort()  # no in-band error in NDJSON or a plain body: only a cut tells
    except ConnectionResetError:
        pass  # the client hung up right after the end (Hermes workers do): nothing to tell it
    return response
