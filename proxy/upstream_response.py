"""What the upstream client hands over: one final response, its body as it arrives.

``UpstreamResponse`` is a view of one exchange on an upstream connection
(``proxy/upstream_connection.py``): it reads the body through ``ResponseBody``
(``proxy/upstream_body.py``) and hands the connection back through ``ResponseConnection``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, Self

from multidict import CIMultiDict

from .errors import UpstreamError


class ResponseBody(Protocol):
    """What a response reads its body from."""

    @property
    def ready(self) -> bool: ...

    def pump(self, sink: Callable[[bytes, bool], bool],
             wait_ready: Callable[[], Awaitable[None]]) -> Awaitable[None]: ...

    def read_now(self) -> bytes | None: ...

    async def next_chunk(self) -> bytes | None: ...


class ResponseConnection(Protocol):
    """What a response needs from the connection it arrived on."""

    @property
    def max_body_bytes(self) -> int: ...

    def body_too_large(self, limit: int) -> UpstreamError: ...

    def finish(self) -> None: ...


class UpstreamResponse:
    """Status, headers, and the body as it arrives. Use as ``async with`` or call ``close``."""

    __slots__ = ("status", "reason", "headers", "raw_headers", "_conn", "_body", "_released")

    def __init__(self, conn: ResponseConnection, body: ResponseBody, status: int, reason: str,
                 headers: CIMultiDict[str], raw_headers: list[tuple[bytes, bytes]]):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.raw_headers = raw_headers
        self._conn = conn
        self._body = body
        self._released = False

    def pump(self, sink: Callable[[bytes, bool], bool],
             wait_ready: Callable[[], Awaitable[None]]) -> Awaitable[None]:
        """Hand the body to ``sink(data, end)`` as it arrives, straight from the parser's
        callback (no task switch per chunk); ``end`` is True once, with the last bytes (or
        none), so the relay ends its own body in that same callback. Returns when the body
        has ended; raises what failed the upstream. ``sink`` returns False to stop reading
        until ``wait_ready()`` returns (a client slower than the upstream)."""
        return self._body.pump(sink, wait_ready)

    @property
    def body_ready(self) -> bool:
        """Body bytes (or its end) have arrived and are waiting to be read or pumped."""
        return self._body.ready

    def read_now(self) -> bytes | None:
        """The whole body when it has all arrived already (small answers); else None."""
        return self._body.read_now()

    async def read(self) -> bytes:
        """The whole body: at most the pool's ``max_body_bytes``, else UpstreamError and the
        connection closed (the queue holds at most ``HIGH_WATER`` and a read meanwhile)."""
        conn = self._conn
        limit = conn.max_body_bytes
        whole = self._body.read_now()
        if whole is not None:
            if len(whole) > limit:
                raise conn.body_too_large(limit)
            return whole
        parts = []
        total = 0
        next_chunk = self._body.next_chunk
        while (chunk := await next_chunk()) is not None:
            total += len(chunk)
            if total > limit:
                raise conn.body_too_large(limit)
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        """Hand the connection back if the message was read whole, else close it."""
        if not self._released:
            self._released = True
            self._conn.finish()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
