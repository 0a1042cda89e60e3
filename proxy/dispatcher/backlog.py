"""Where the dispatcher learns how far behind the GPUs are: the proxy's queued requests.

The source is a small interface with two implementations: one proxy's ``GET /throttle/status``,
or the same document built straight from the proxies' shared Redis store (no proxy in the
path, the whole pool's queue). :func:`backlog_from_status` is the pure parser of
``GET /throttle/status``; it refuses documents it does not understand rather than reading a
missing number as zero, because a zero backlog means "spawn". Failures to read it are
told in one line (``proxy.cli_errors``), not as the HTTP client's internals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import aiohttp

from ..cli_errors import describe_failure, hide_password
from ..config import WILDCARD_MODEL


class BacklogError(Exception):
    """The backlog could not be read or understood; the tick must not spawn on a guess."""


class ProxyUnreachable(BacklogError):
    """Nothing answered: connection refused, timed out, or the shared store is down."""


@dataclass(frozen=True, slots=True)
class Backlog:
    #: requests queued for the watched models (or the whole proxy queue)
    queued: int
    #: per watched model; empty when reading the total queue depth
    per_model: Mapping[str, int] = field(default_factory=dict)
    #: watched models the proxy does not serve, not even through ``"*"``: the backlog of
    #: those is unknown, so the loop must not spawn on this reading
    missing: tuple[str, ...] = ()
    #: the proxy says its shared store is unreachable and limits are local approximations
    degraded: bool = False
    #: watched name -> the proxy route that serves it (itself, or ``"*"``)
    routes: Mapping[str, str] = field(default_factory=dict)
    #: sum of the effective caps of the routes serving the watched models (adaptive caps
    #: included, as the status reports them); None: some route is uncapped
    cap: int | None = None
    #: requests in flight on those routes
    in_flight: int = 0
    #: requests in flight or queued that carry an attribution (the workers' own requests);
    #: None when the status has no attributed entries at all
    attributed_open: int | None = None
    #: of those, the ones in flight (a queued request may not show on its attribution)
    attributed_in_flight: int | None = None
    #: the attributed values (the part after ``<client>/``: for Hermes workers, task ids)
    #: with a request open, which tells when a spawned worker first reached the proxy
    attributed_values: frozenset[str] = frozenset()

    @property
    def free_capacity(self) -> int | None:
        """Slots under the cap; None when there is no cap to be under."""
        return None if self.cap is None else max(self.cap - self.in_flight, 0)


class BacklogSource(Protocol):
    async def read(self) -> Backlog: ...

    async def close(self) -> None: ...


@runtime_checkable
class ChangeSignal(Protocol):
    """A source that can tell when the backlog changed (the proxy's event stream)."""

    async def wait_changed(self, timeout: float) -> bool: ...


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BacklogError(f"status field {where} is not a count: {value!r}")
    return int(value)


def resolve_route(name: str, table: Mapping[str, Any]) -> str | None:
    """The proxy's route for a model name, as its admission does: exact, else ``"*"``."""
    if name in table:
        return name
    if WILDCARD_MODEL in table:
        return WILDCARD_MODEL
    return None


def _entry(table: Mapping[str, Any], route: str) -> Mapping[str, Any]:
    entry = table.get(route)
    if not isinstance(entry, Mapping) or "queued" not in entry:
        raise BacklogError(f"status entry models.{route} has no 'queued'")
    return entry


def _attributed(doc: Mapping[str, Any]) -> tuple[int | None, int | None, frozenset[str]]:
    """(in flight + queued, in flight, values with a request open) over the attributed
    entries; None: there are none, and the proxy does not say it lists every one (an empty
    table from a proxy with ``attribution_listed`` is 0: only outside traffic is open)."""
    table = doc.get("attributed")
    if not isinstance(table, Mapping) or not table:
        if doc.get("attribution_listed") is True and isinstance(table, Mapping):
            return 0, 0, frozenset()
        return None, None, frozenset()
    total = in_flight = 0
    values: set[str] = set()
    for name, entry in table.items():
        if isinstance(entry, Mapping):
            n = _count(entry.get("in_flight", 0), f"attributed.{name}.in_flight")
            in_flight += n
            opened = n + _count(entry.get("queued", 0), f"attributed.{name}.queued")
            total += opened
            if opened:
                values.add(str(name).rpartition("/")[2])
    return total, in_flight, frozenset(values)


def backlog_from_status(doc: Any, models: Sequence[str] | None = None) -> Backlog:
    """Sum ``models.<route>.queued`` over the routes serving ``models`` (a model the proxy
    serves through ``"*"`` counts ``"*"``'s queue, once however many names map to it);
    without models, the total ``queue.depth``. Capacity (cap, in flight) comes with it."""
    if not isinstance(doc, Mapping):
        raise BacklogError("status document is not a JSON object")
    degraded = bool(doc.get("degraded", False))
    if doc.get("hosts") == 0:
        # A pool no proxy has registered in (a wrong Redis URL or key prefix) reads as empty.
        raise BacklogError("no proxy host in the status (hosts: 0): wrong Redis URL or prefix?")
    table = doc.get("models")
    if models and not isinstance(table, Mapping):
        raise BacklogError("status document has no models table")
    table = table if isinstance(table, Mapping) else {}
    attributed, attributed_in_flight, attributed_values = _attributed(doc)
    routes: dict[str, str] = {}
    missing: list[str] = []
    if models:
        for name in models:
            route = resolve_route(name, table)
            if route is None:
                missing.append(name)
            else:
                routes[name] = route
        watched = list(dict.fromkeys(routes.values()))
    else:
        watched = list(table)
    cap: int | None = 0
    in_flight = 0
    per_route: dict[str, int] = {}
    for route in watched:
        entry = _entry(table, route)
        per_route[route] = _count(entry["queued"], f"models.{route}.queued")
        in_flight += _count(entry.get("in_flight", 0), f"models.{route}.in_flight")
        route_cap = entry.get("cap")
        if route_cap is None or cap is None:
            cap = None
        else:
            cap += _count(route_cap, f"models.{route}.cap")
    if models and not watched:
        cap = None
    if not models:
        queue = doc.get("queue")
        if not isinstance(queue, Mapping) or "depth" not in queue:
            raise BacklogError("status document has no queue.depth")
        return Backlog(queued=_count(queue["depth"], "queue.depth"), degraded=degraded,
                       cap=cap if watched else None, in_flight=in_flight,
                       attributed_open=attributed, attributed_in_flight=attributed_in_flight,
                       attributed_values=attributed_values)
    return Backlog(
        queued=sum(per_route.values()),
        per_model={name: per_route[route] for name, route in routes.items()},
        missing=tuple(missing),
        degraded=degraded,
        routes=routes,
        cap=cap,
        in_flight=in_flight,
        attributed_open=attributed,
        attributed_in_flight=attributed_in_flight,
        attributed_values=attributed_values,
    )


class HttpStatusBacklog:
    """Reads the backlog from the proxy's ``/throttle/status`` JSON, one GET per tick."""

    def __init__(
        self,
        url: str,
        models: Sequence[str] | None = None,
        *,
        timeout_s: float = 5.0,
        api_key: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url
        self.models = tuple(models or ())
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = session
        self._own_session = session is None

    async def read(self) -> Backlog:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(
                self.url, headers=self._headers, timeout=self._timeout
            ) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:200]
                    raise BacklogError(f"GET {self.url}: HTTP {resp.status}: {text}")
                doc = await resp.json(content_type=None)
        except BacklogError:
            raise
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise ProxyUnreachable(describe_failure(exc, f"GET {self.url}")) from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise BacklogError(describe_failure(exc, f"GET {self.url}")) from exc
        return backlog_from_status(doc, self.models)

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None


class RedisStatusBacklog:
    """Reads the pool's status document from the shared Redis store, as
    ``llm-throttle status --redis`` does: every proxy host's queue, one round trip."""

    def __init__(self, url: str, models: Sequence[str] | None = None, *,
                 key_prefix: str = "llmthrottle", timeout_s: float = 5.0) -> None:
        self.url = url
        self.models = tuple(models or ())
        self.key_prefix = key_prefix
        self.timeout_s = timeout_s

    async def read(self) -> Backlog:
        try:
            from ..limits.redis_status import read_status_document
        except ImportError as exc:
            raise BacklogError(f"the Redis store reader is not available: {exc}") from exc
        try:
            doc = await asyncio.wait_for(
                read_status_document(self.url, key_prefix=self.key_prefix), self.timeout_s)
        except Exception as exc:  # whatever Redis says, nothing usable answered
            raise ProxyUnreachable(
                describe_failure(exc, f"redis status {hide_password(self.url)}")) from exc
        return backlog_from_status(doc, self.models)

    async def close(self) -> None:
        return None
