"""A lean HTTP/1.1 client for upstreams: pooled keep-alive connections, streamed bodies.

Why not aiohttp's client: on the proxy's hot path it cost about a third of a millisecond of CPU
per request (request object, URL and cookie handling, tracing hooks), more than everything else
the proxy does. Upstreams are a handful of known origins speaking HTTP/1.1, so this client
does only that: one write per request, llhttp (``httptools``) to parse the answer, and the body
handed over as the upstream sends it.

Theory of operation: ``UpstreamPool.request`` takes an idle connection (or opens one), writes
the request, and returns an ``UpstreamResponse`` once the final status line and headers are
in. One connection (``proxy/upstream_connection.py``) carries exactly one exchange at a time
and goes back to the pool only when that exchange framed cleanly; anything else (early close
by the reader, a parse error, bytes after the message, a timeout) closes it, which also tells
the upstream to stop generating. Idle connections expire after ``idle_timeout_s``, before the
upstream's own keep-alive timeout, so a reused connection is rarely closed under a request;
when one is anyway (written, then closed before any answer byte), the request is sent again
on another connection only if its method is idempotent: a POST may have reached the upstream
and started generating. An upstream that closes connections right after answering, though it
announced keep-alive (llama-server after every stream), is learnt per body framing and not
raced at all (``proxy/upstream_reuse.py``). Silence longer than the read timeout, idle expiry
and the end of a reuse probe are found by one sweep per pool, not a timer per request.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from urllib.parse import urlsplit

from .config import UpstreamConfig
from .errors import UpstreamError, UpstreamTimeout
from .upstream_connection import StaleConnection, UpstreamConnection
from .upstream_response import UpstreamResponse
from .upstream_reuse import QUICK_CLOSE_S, Reuse, ReusePolicy

log = logging.getLogger("llm_throttle.upstream")

__all__ = ["UpstreamPool", "UpstreamResponse", "client_tls", "encode_headers"]

#: RFC 9110 section 9.2.2: sending one of these twice has the effect of sending it once
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def client_tls(config: UpstreamConfig) -> ssl.SSLContext | None:
    """The TLS context for an https upstream (None for http): the system CAs or
    ``ca_file``, certificate and host name verified unless ``verify: false``."""
    if urlsplit(config.url).scheme != "https":
        return None
    context = ssl.create_default_context(cafile=config.ca_file)
    if not config.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class UpstreamPool:
    """Keep-alive connections to one upstream origin (no cap: the limiter caps requests)."""

    def __init__(self, config: UpstreamConfig, loop: asyncio.AbstractEventLoop):
        parts = urlsplit(config.url)
        self.name = config.name
        self.loop = loop
        self.host = parts.hostname or "127.0.0.1"
        default_port = 443 if parts.scheme == "https" else 80
        self.port = parts.port or default_port
        self.ssl = client_tls(config)
        self.server_hostname = (config.server_hostname or self.host) if self.ssl else None
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default_port else f"{host}:{self.port}"
        #: a path prefix of the origin (``http://host/ollama``) is kept before every path
        self.prefix = parts.path.rstrip("/")
        self.connect_timeout_s = config.connect_timeout_s
        self.read_timeout_s = config.read_timeout_s
        self.idle_timeout_s = config.idle_timeout_s
        #: the most a body read whole may hold (streams relayed as they come are not bounded)
        self.max_body_bytes = config.max_response_body_bytes
        self._idle: list[UpstreamConnection] = []
        self._open: set[UpstreamConnection] = set()
        #: which framings the upstream closes after (not pooled), and their probes
        self.reuse = ReusePolicy()
        self._probes: list[UpstreamConnection] = []
        #: silence and idle expiry are checked by one sweep per pool, not a timer per request
        self._sweep_every = max(0.01, min(1.0, config.read_timeout_s / 4,
                                          config.idle_timeout_s / 4))
        self._sweeper = loop.call_later(self._sweep_every, self._sweep)

    async def request(self, method: str, target: str, headers: bytes,
                      body: bytes | None) -> UpstreamResponse:
        """Send one request; raises UpstreamError (502) or UpstreamTimeout (504).

        ``headers`` are the header lines, encoded, each ending in CRLF (see ``encode_headers``).
        """
        head = f"{method} {self.prefix}{target} HTTP/1.1\r\nHost: {self.host_header}\r\n"
        parts = [head.encode("utf-8", "surrogateescape"), headers]
        if body is not None:
            parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
            parts.append(body)
        else:
            parts.append(b"\r\n")
        data = b"".join(parts)
        head_only = method == "HEAD"
        idle = self._idle
        if idle:
            expired_before = self.loop.time() - self.idle_timeout_s
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be stale
            if not conn.usable or conn.idle_since < expired_before:
                conn.abort()  # closed or expired while idle: certainly nothing sent on it
                continue
            try:
                return await conn.send(data, head_only)
            except StaleConnection:
                if method in IDEMPOTENT_METHODS:
                    continue  # closed under the request: harmless to send it again
                raise UpstreamError(
                    f"upstream '{self.name}' closed a reused connection before answering; "
                    f"the {method} was not sent again since the upstream may have received "
                    "it") from None
            except BaseException:
                conn.abort()
                raise
        conn = await self._connect()
        if not conn.usable:  # it spoke (or closed) before being asked anything
            conn.abort()
            raise UpstreamError(f"upstream '{self.name}' closed the connection or sent bytes "
                                "before the request", code="upstream_bad_response")
        try:
            return await conn.send(data, head_only)
        except StaleConnection:  # not reused: cannot happen, but never leak the name
            raise UpstreamError(f"upstream '{self.name}' closed the connection") from None
        except BaseException:
            conn.abort()
            raise

    def _sweep(self) -> None:
        """Fail the requests whose upstream has been silent for longer than the read timeout;
        close the connections idle for longer than the idle timeout."""
        now = self.loop.time()
        timeout = self.read_timeout_s
        for conn in [c for c in self._open if c.busy and now - c.last_activity > timeout]:
            conn.time_out(timeout)
        expired_before = now - self.idle_timeout_s
        for conn in [c for c in self._idle if c.idle_since < expired_before]:
            conn.abort()
        if self._probes:
            self._end_probes(now)
        self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    def _end_probes(self, now: float) -> None:
        """Probes still open ``QUICK_CLOSE_S`` after their exchange: the upstream keeps
        connections after that framing after all; pool them again."""
        for conn in [c for c in self._probes if now - c.idle_since >= QUICK_CLOSE_S]:
            self._probes.remove(conn)
            if conn.usable:
                log.info("upstream '%s' kept a connection open after a %s answer: pooling "
                         "those again", self.name, conn.framing.value)
                self.reuse.probe_survived(conn.framing)
                self._idle.append(conn)  # the idle expiry applies from its exchange's end

    async def _connect(self) -> UpstreamConnection:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.server_hostname)
        except TimeoutError:
            raise UpstreamTimeout(
                f"upstream '{self.name}' did not accept a connection within "
                f"{self.connect_timeout_s:g}s") from None
        except ssl.SSLError as exc:
            raise UpstreamError(
                f"upstream '{self.name}': TLS handshake failed "
                f"({getattr(exc, 'verify_message', None) or exc.reason})") from None
        except OSError:
            raise UpstreamError(
                f"upstream '{self.name}' refused the connection or could not be reached"
            ) from None
        self._open.add(conn)
        return conn

    def put_back(self, conn: UpstreamConnection) -> None:
        """An exchange ended cleanly with keep-alive: pool the connection, unless the
        upstream is known to close it now (``proxy/upstream_reuse.py``)."""
        decision = self.reuse.after_exchange(conn.framing)
        if decision is Reuse.POOL:
            self._idle.append(conn)
        elif decision is Reuse.CLOSE:
            conn.retire()
        else:
            self._probes.append(conn)

    def closed_by_upstream(self, conn: UpstreamConnection) -> None:
        if self.reuse.closed_by_upstream(conn.framing, self.loop.time() - conn.idle_since):
            log.info("upstream '%s' closes connections right after %s answers although it "
                     "announces keep-alive; not pooling those (a request on one would race "
                     "its close)", self.name, conn.framing.value)

    def forget(self, conn: UpstreamConnection) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        elif conn in self._probes:
            self._probes.remove(conn)

    @property
    def idle_count(self) -> int:
        """Connections waiting in the pool (tests, status)."""
        return len(self._idle)

    def close(self) -> None:
        self._sweeper.cancel()
        for conn in list(self._open):
            conn.abort()
        self._idle.clear()
        self._probes.clear()


def encode_headers(headers: Iterable[tuple[str, str]]) -> bytes:
    """Header lines as ``UpstreamPool.request`` takes them."""
    return "".join([f"{name}: {value}\r\n" for name, value in headers]).encode(
        "utf-8", "surrogateescape")
