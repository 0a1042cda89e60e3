"""A lean HTTP/1.1 server on llhttp (``httptools``): what the proxy needs and nothing more.

Why not aiohttp's server: measured here, aiohttp's low-level server alone cost ~0.17 ms of CPU
per request, more than half of the proxy's 0.3 ms budget, and a streamed chunk took a task
switch plus a write lock. The proxy has one handler and needs HTTP/1.1 with keep-alive,
bounded heads and bodies, and answers written whole or streamed chunk by chunk. llhttp (the
parser of Node.js, also behind aiohttp and uvicorn) parses; this module frames, keeps alive
and times out. Its upstream twin is ``proxy/upstream.py``.

Theory of operation: this module listens, counts connections, keeps the Date header and
the idle sweep, and starts and ends draining. Each TCP connection is one ``ClientConnection``
(``proxy/connection.py``: its life as a state enum, pipelining, backpressure, framing of the
answers); its parser is ``proxy/request_parser.py``; the request and its answers are
``proxy/messages.py``, which reach the connection only through the ``Channel`` interface
declared there.

At most ``max_connections`` connections are served; one more gets a 503 JSON
(``retry-after``) and is closed: the OpenAI SDKs back off and retry on 503, while a bare close
reads as a network fault. When the server starts draining, idle keep-alive connections are
closed at once and busy ones after their answer (``Connection: close``).

Limits, each answered with an OpenAI-shaped error (the head and framing ones are enforced by
``proxy/request_parser.py``): request target 8 KiB (414), one header 16 KiB, 128 headers,
64 KiB of head however it arrives (431), HTTP/1.0 and 1.1 only (505), the head within
``header_read_timeout_s`` of the connection going idle (slowloris: closed), the body within
``max_body_bytes`` (413, also after decompression) and ``body_read_timeout_s`` (408), a
chunked body's framing and extensions within its own size plus 128 KiB (413).
"""

from __future__ import annotations

import asyncio
import logging
from email.utils import formatdate
from http import HTTPStatus

from .connection import ClientConnection, Handler, ServerLimits

__all__ = ["Handler", "HttpServer", "ServerLimits"]

log = logging.getLogger("llm_throttle.server")

_REASONS = {s.value: s.phrase for s in HTTPStatus}
#: connections served at once on an admin listener (apart from ``max_connections``)
ADMIN_MAX_CONNECTIONS = 64


class HttpServer:
    """Listening sockets and their connections around one handler."""

    def __init__(self, handler: Handler, limits: ServerLimits):
        self.handler = handler
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.connections: set[ClientConnection] = set()
        #: connections refused over ``max_connections`` since start, and those still open
        self.refused_connections = 0
        self.refused: set[ClientConnection] = set()
        self.draining = False
        self.date_line = b""
        self._status_lines: dict[tuple[int, str | None], bytes] = {}
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._refusal_logged_at = -1e9
        self._admin_ports: set[int] = set()
        self._admin_connections: set[ClientConnection] = set()
        self._sweep()

    async def listen(self, host: str, port: int, *, admin: bool = False) -> tuple[str, int]:
        """Start accepting on ``host:port`` (0: a free port); returns the bound address.

        An ``admin`` listener's connections do not count against ``max_connections`` (a
        flood of clients must not lock out metrics scrapes and probes); they have their own
        small cap, ``ADMIN_MAX_CONNECTIONS``."""
        server = await self.loop.create_server(lambda: ClientConnection(self), host, port,
                                               reuse_address=True, backlog=1024)
        self._servers.append(server)
        address = server.sockets[0].getsockname()[:2]
        if admin:
            self._admin_ports.add(address[1])
        return address

    def admit_connection(self, conn: ClientConnection) -> bool:
        """Count a new connection in, or refuse it (over ``max_connections``, or
        ``ADMIN_MAX_CONNECTIONS`` on an admin listener), logged at most once every 10 s."""
        if conn.local_port in self._admin_ports:
            if len(self._admin_connections) < ADMIN_MAX_CONNECTIONS:
                self._admin_connections.add(conn)
                self.connections.add(conn)
                return True
        elif len(self.connections) - len(self._admin_connections) < \
                self.limits.max_connections:
            self.connections.add(conn)
            return True
        self.refused_connections += 1
        self.refused.add(conn)
        now = self.loop.time()
        if now - self._refusal_logged_at >= 10.0:
            self._refusal_logged_at = now
            log.warning("max_connections (%d) reached: refusing new connections with 503 "
                        "(%d refused so far)", self.limits.max_connections,
                        self.refused_connections)
        return False

    def connection_closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        self._admin_connections.discard(conn)
        self.refused.discard(conn)

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
        """Draining starts: new connections are refused, idle keep-alive ones closed, busy
        ones closed after their answers (graceful shutdown)."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        self.draining = True
        for conn in list(self.connections):
            conn.start_draining()

    async def close(self) -> None:
        """Stop listening, cancel what still runs, close every connection."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        tasks = [t for c in self.connections if (t := c.answer_task) is not None]
        for conn in [*self.connections, *self.refused]:
            conn.abort()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
