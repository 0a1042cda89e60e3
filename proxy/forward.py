"""Talking to upstreams: headers in and out, one request, the response relayed as it arrives.

Bytes pass through untouched (no decompression, no re-chunking): a streamed response is
written to the client chunk by chunk as the upstream sends it. Hop-by-hop headers are dropped
both ways (RFC 9110 section 7.6.1), the client's credentials never reach the upstream, and the
upstream's own key is injected here and nowhere else.

Peer disconnection (aiohttp "Peer disconnection"): the server runs with handler cancellation,
so a client that goes away cancels the handler; the ``async with`` around the upstream
response then closes that connection, which tells the upstream to stop generating.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .config import UpstreamConfig
from .errors import ProxyError, UpstreamError, UpstreamTimeout
from .tokens import SSEUsageTap

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Trailers", "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
    )
)
#: the client's credentials for the proxy; never forwarded
CLIENT_CREDENTIALS = frozenset({"authorization", "api-key", "x-api-key"})
_REQUEST_DROP = HOP_BY_HOP | CLIENT_CREDENTIALS
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}


def _connection_listed(headers: Mapping[str, str]) -> frozenset[str]:
    """Header names that the sender's ``Connection`` header marks as hop-by-hop."""
    value = headers.get("Connection")
    if not value:
        return frozenset()
    return frozenset(token.strip().lower() for token in value.split(",") if token.strip())


def upstream_request_headers(
    incoming: CIMultiDictProxy[str], upstream: UpstreamConfig, *, identity_encoding: bool
) -> CIMultiDict[str]:
    """What the upstream sees: the client's headers less hop-by-hop and credentials."""
    dropped = _REQUEST_DROP | _connection_listed(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if name.lower() not in dropped:
            out.add(name, value)
    if upstream.api_key:
        out["Authorization"] = f"Bearer {upstream.api_key}"
    if identity_encoding:
        # Admitted calls are read for their usage on the way back: keep them uncompressed.
        out["Accept-Encoding"] = "identity"
    return out


def client_response_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    dropped = _RESPONSE_DROP | _connection_listed(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if name.lower() not in dropped:
            out.add(name, value)
    return out


@dataclass(slots=True)
class RelayOutcome:
    """What happened on the way back, for token settlement and metrics."""

    status: int = 0
    usage: tuple[int, int] | None = None
    chunks: int = 0  # data events relayed (streams)
    complete: bool = False  # the upstream response ended normally
    first_byte_at: float | None = None


class Forwarder:
    """One pooled HTTP client for all upstreams; per-upstream timeouts fixed at start."""

    def __init__(self, upstreams: Mapping[str, UpstreamConfig]):
        self._upstreams = upstreams
        self._timeouts = {
            name: aiohttp.ClientTimeout(
                total=None, sock_connect=up.connect_timeout_s, sock_read=up.read_timeout_s
            )
            for name, up in upstreams.items()
        }
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open(
        self, upstream: UpstreamConfig, method: str, path_qs: str, headers: CIMultiDict[str],
        body: bytes | None,
    ) -> aiohttp.ClientResponse:
        """Send the request; raises UpstreamError (502) or UpstreamTimeout (504)."""
        assert self._session is not None, "Forwarder.start() was not awaited"
        url = upstream.url + path_qs
        try:
            return await self._session.request(
                method, url, headers=headers, data=body, timeout=self._timeouts[upstream.name],
                allow_redirects=False, compress=None,
            )
        except asyncio.TimeoutError:
            raise UpstreamTimeout(
                f"upstream '{upstream.name}' did not answer within "
                f"{upstream.read_timeout_s:g}s"
            ) from None
        except aiohttp.ClientConnectorError:
            raise UpstreamError(
                f"upstream '{upstream.name}' refused the connection or could not be reached"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(
                f"upstream '{upstream.name}' failed: {type(exc).__name__}"
            ) from None


async def relay_plain(
    upstream_response: aiohttp.ClientResponse, upstream_name: str, outcome: RelayOutcome,
    read_usage: Callable[[bytes], tuple[int, int] | None] | None,
) -> web.Response:
    """Read a (small) non-streamed response whole and pass it on."""
    try:
        body = await upstream_response.read()
    except asyncio.TimeoutError:
        raise UpstreamTimeout(f"upstream '{upstream_name}' stopped sending its response") from None
    except (aiohttp.ClientError, OSError):
        raise UpstreamError(f"upstream '{upstream_name}' broke off its response") from None
    outcome.status = upstream_response.status
    outcome.complete = True
    if read_usage is not None and upstream_response.status < 300:
        outcome.usage = read_usage(body)
    return web.Response(
        status=upstream_response.status,
        reason=upstream_response.reason,
        headers=client_response_headers(upstream_response.headers),
        body=body,
    )


async def relay_stream(
    request: web.Request, upstream_response: aiohttp.ClientResponse, upstream_name: str,
    outcome: RelayOutcome, tap: SSEUsageTap | None, clock: Callable[[], float],
) -> web.StreamResponse:
    """Relay chunk by chunk. A failure after the first byte ends with an SSE error event."""
    response = web.StreamResponse(
        status=upstream_response.status,
        reason=upstream_response.reason,
        headers=client_response_headers(upstream_response.headers),
    )
    outcome.status = upstream_response.status
    await response.prepare(request)
    failure: ProxyError | None = None
    try:
        async for data in upstream_response.content.iter_any():
            if tap is not None:
                data = tap.feed(data)
                if not data:
                    continue
            if outcome.first_byte_at is None:
                outcome.first_byte_at = clock()
            await response.write(data)
        if tap is not None and (rest := tap.flush()):
            await response.write(rest)
        outcome.complete = True
    except asyncio.TimeoutError:
        failure = UpstreamTimeout(f"upstream '{upstream_name}' went silent mid-stream")
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        failure = UpstreamError(f"upstream '{upstream_name}' closed the stream mid-response")
    finally:
        if tap is not None:
            outcome.usage, outcome.chunks = tap.usage, tap.chunks
    if failure is not None:
        await response.write(failure.sse_event())
    await response.write_eof()
    return response
