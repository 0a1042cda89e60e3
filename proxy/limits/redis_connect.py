"""One connection configuration for both stacks (redis-py's clients and the hot-path pipeline).

redis-py parses the store URL (``redis://``, ``rediss://``, ``unix://``, and
``redis+sentinel://`` through its ``Sentinel``); the pipeline then reads everything it needs
from a connection redis-py would open (host or socket path, TLS context, user, password, db,
client name), so the two can never address different data. What the pipeline cannot honour
(a credential provider) is refused when the configuration is read.

Sentinel URLs: ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``
with redis-py's query options (``?client_name=...``); ``sentinel_password`` in the query
authenticates to the sentinels themselves.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

SENTINEL_SCHEME = "redis+sentinel"
URL_SCHEMES = ("redis://", "rediss://", "unix://", f"{SENTINEL_SCHEME}://")


class UnsupportedURL(ValueError):
    """The store URL asks for something the hot path cannot honour."""


@dataclass(frozen=True, slots=True)
class SentinelURL:
    sentinels: list[tuple[str, int]]
    service: str
    #: redis-py connection options for the master (db, username, password, client_name, ...)
    options: dict[str, Any]
    sentinel_password: str | None


def parse_sentinel_url(url: str) -> SentinelURL:
    parts = urlsplit(url)
    netloc = parts.netloc
    auth, _, hosts = netloc.rpartition("@")
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host:
            host, port = port, "26379"
        try:
            sentinels.append((host.strip("[]"), int(port)))
        except ValueError:
            raise UnsupportedURL(f"bad sentinel address {item!r} in the store URL") from None
    path = [p for p in parts.path.split("/") if p]
    if not path or not sentinels or len(path) > 2:
        raise UnsupportedURL("a sentinel store URL is redis+sentinel://host:port[,...]"
                             "/service[/db]")
    query = dict(parse_qsl(parts.query))
    sentinel_password = query.pop("sentinel_password", None)
    # redis-py parses the rest exactly as it would for a plain URL to the master
    plain = f"redis://{auth + '@' if auth else ''}localhost/{path[1] if len(path) > 1 else 0}"
    if query:
        plain += "?" + urlencode(query)
    options = parse_url(plain)
    options.pop("host", None)
    options.pop("port", None)
    return SentinelURL(sentinels, path[0], options, sentinel_password)


def client_for(url: str, **options: Any) -> Redis:
    """A redis-py client for the store URL (``options`` are socket and retry settings)."""
    if not url.startswith(f"{SENTINEL_SCHEME}://"):
        return Redis.from_url(url, **options)
    parsed = parse_sentinel_url(url)
    sentinel_kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    if parsed.sentinel_password:
        sentinel_kwargs["password"] = parsed.sentinel_password
    sentinel = Sentinel(parsed.sentinels, sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(parsed.service, **parsed.options, **options)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how the pipeline connects: what one redis-py connection would do."""

    host: str | None
    port: int
    path: str | None
    tls: ssl.SSLContext | None
    username: str | None
    password: str | None
    db: int
    client_name: str | None
    #: the current master's address (Sentinel); None: host and port are fixed
    master: Callable[[], Awaitable[tuple[str, int]]] | None = None

    async def address(self) -> tuple[str, int]:
        if self.master is not None:
            host, port = await self.master()
            return str(host), int(port)
        return self.host or "localhost", self.port

    def setup(self) -> list[tuple[str, ...]]:
        """Commands a new connection sends before it carries calls (AUTH, SELECT, SETNAME)."""
        out: list[tuple[str, ...]] = []
        if self.password is not None:
            out.append(("AUTH", self.username, self.password) if self.username
                       else ("AUTH", self.password))
        elif self.username:
            raise UnsupportedURL("a store URL with a user needs a password")
        if self.db:
            out.append(("SELECT", str(self.db)))
        if self.client_name:
            out.append(("CLIENT", "SETNAME", self.client_name))
        return out


def endpoint_of(client: Redis) -> Endpoint:
    """Read the connection settings from a redis-py client (its pool's own connection)."""
    pool = client.connection_pool
    conn = pool.make_connection()
    if getattr(conn, "credential_provider", None) is not None:
        raise UnsupportedURL("the hot path cannot use a redis-py credential provider")
    tls = None
    context = getattr(conn, "ssl_context", None)
    if context is not None:
        try:
            tls = context.get()
        except (OSError, ssl.SSLError) as exc:
            raise UnsupportedURL(f"the store's TLS settings do not load: {exc}") from None
    master = pool.get_master_address if isinstance(pool, SentinelConnectionPool) else None
    return Endpoint(
        host=getattr(conn, "host", None), port=int(getattr(conn, "port", 6379) or 6379),
        path=getattr(conn, "path", None) or None, tls=tls,
        username=conn.username, password=conn.password, db=int(conn.db or 0),
        client_name=conn.client_name, master=master)


def check_store_url(url: str) -> str | None:
    """A problem with the store URL (for the config loader), or None. Connects to nothing."""
    if not url.startswith(URL_SCHEMES):
        return f"expected 'memory' or a {', '.join(URL_SCHEMES)} URL, got {url!r}"
    try:
        endpoint_of(client_for(url)).setup()
    except (UnsupportedURL, ValueError) as exc:
        return str(exc)
    return None
