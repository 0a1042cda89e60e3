"""Talking to upstreams: headers in and out, one request, the response relayed as it arrives.

Bytes pass through untouched (no decompression, no re-chunking of content): a streamed
response is written to the client chunk by chunk as the upstream sends it. Hop-by-hop headers
are dropped both ways (RFC 9110 section 7.6.1), the client's credentials never reach the
upstream, and the upstream's own key is injected here and nowhere else.

Peer disconnection: a client that goes away cancels its handler (``proxy/server.py``); the
``async with`` around the upstream response then closes that connection, which tells the
upstream to stop generating.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict

from .config import UpstreamConfig
from .errors import ProxyError
from .server import Request, Response, StreamResponse
from .tokens import SSEUsageTap
from .upstream import UpstreamPool, UpstreamResponse

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Trailers", "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
        "Expect",  # the proxy reads the whole body itself; the upstream must not wait for it
    )
)
#: the client's credentials for the proxy; never forwarded
CLIENT_CREDENTIALS = frozenset({"authorization", "api-key", "x-api-key"})
#: the server hands over request bodies decompressed: forward them as such
_REQUEST_DROP = HOP_BY_HOP | CLIENT_CREDENTIALS | {"content-encoding"}
#: admitted calls are read for usage on the way back: the proxy sets Accept-Encoding itself
_REQUEST_DROP_IDENTITY = _REQUEST_DROP | {"accept-encoding"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}


def _connection_listed(headers: Mapping[str, str]) -> frozenset[str]:
    """Header names that the sender's ``Connection`` header marks as hop-by-hop."""
    value = headers.get("Connection")
    if not value:
        return frozenset()
    return frozenset(token.strip().lower() for token in value.split(",") if token.strip())


def upstream_request_headers(
    incoming: CIMultiDict[str], upstream: UpstreamConfig, *, identity_encoding: bool
) -> list[tuple[str, str]]:
    """What the upstream sees: the client's headers less hop-by-hop and credentials."""
    dropped = _REQUEST_DROP_IDENTITY if identity_encoding else _REQUEST_DROP
    if "Connection" in incoming:
        dropped = dropped | _connection_listed(incoming)
    out = [(name, value) for name, value in incoming.items() if name.lower() not in dropped]
    if upstream.api_key:
        out.append(("Authorization", f"Bearer {upstream.api_key}"))
    if identity_encoding:
        # Admitted calls are read for their usage on the way back: keep them uncompressed.
        out.append(("Accept-Encoding", "identity"))
    return out


def client_response_headers(incoming: CIMultiDict[str],
                            extra: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    dropped = _RESPONSE_DROP | _connection_listed(incoming) if "Connection" in incoming \
        else _RESPONSE_DROP
    out = [(name, value) for name, value in incoming.items() if name.lower() not in dropped]
    if extra:
        extra_names = {name.lower() for name in extra}
        out = [(name, value) for name, value in out if name.lower() not in extra_names]
        out.extend(extra.items())
    return out


@dataclass(slots=True)
class RelayOutcome:
    """What happened on the way back, for token settlement and metrics."""

    status: int = 0
    usage: tuple[int, int] | None = None
    chunks: int = 0  # data events relayed (streams)
    complete: bool = False  # the upstream response ended normally
    first_byte_at: float | None = None
    client_gone: bool = False  # the client disconnected before the end


class Forwarder:
    """Connection pools for every upstream, created at start."""

    def __init__(self, upstreams: Mapping[str, UpstreamConfig]):
        self._upstreams = upstreams
        self._pools: dict[str, UpstreamPool] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._pools = {
            name: UpstreamPool(name, up.url, up.connect_timeout_s, up.read_timeout_s, loop)
            for name, up in self._upstreams.items()
        }

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()

    async def open(
        self, upstream: UpstreamConfig, method: str, target: str,
        headers: list[tuple[str, str]], body: bytes | None,
    ) -> UpstreamResponse:
        """Send the request; raises UpstreamError (502) or UpstreamTimeout (504)."""
        return await self._pools[upstream.name].request(method, target, headers, body)


async def relay_plain(
    upstream_response: UpstreamResponse, outcome: RelayOutcome,
    read_usage: Callable[[bytes], tuple[int, int] | None] | None,
    extra_headers: Mapping[str, str] | None = None,
) -> Response:
    """Read a (small) non-streamed response whole and pass it on."""
    body = await upstream_response.read()
    outcome.status = upstream_response.status
    outcome.complete = True
    if read_usage is not None and upstream_response.status < 300:
        outcome.usage = read_usage(body)
    return Response(upstream_response.status, body,
                    client_response_headers(upstream_response.headers, extra_headers),
                    upstream_response.reason)


async def relay_stream(
    request: Request, upstream_response: UpstreamResponse,
    outcome: RelayOutcome, tap: SSEUsageTap | None, clock: Callable[[], float],
    extra_headers: Mapping[str, str] | None = None,
) -> StreamResponse:
    """Relay chunk by chunk. A failure after the first byte ends with an SSE error event."""
    outcome.status = upstream_response.status
    failure: ProxyError | None = None
    response = request.start_stream(
        upstream_response.status, upstream_response.reason,
        client_response_headers(upstream_response.headers, extra_headers))
    try:
        async for data in upstream_response.iter_chunks():
            if tap is not None:
                data = tap.feed(data)
                if not data:
                    continue
            if outcome.first_byte_at is None:
                outcome.first_byte_at = clock()
            response.write(data)
            if response.paused:
                await response.drain()
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
        if failure is not None:
            response.write(failure.sse_event())
        response.finish()
    except ConnectionResetError:
        pass  # the client hung up right after the end (Hermes workers do): nothing to tell it
    return response
