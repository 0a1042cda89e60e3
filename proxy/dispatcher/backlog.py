"""Where the dispatcher learns how far behind the GPUs are: the proxy's queued requests.

The source is a small interface with two implementations: one proxy's ``GET /throttle/status``,
or the same document built straight from the proxies' shared Redis store (no proxy in the
path, the whole pool's queue). :func:`backlog_from_status` is the pure parser of
``GET /throttle/status``; it refuses documents it does not understand rather than reading a
missing number as zero, because a zero backlog means "spawn".
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp


class BacklogError(Exception):
    """The backlog could not be read or understood; the tick must not spawn on a guess."""


@dataclass(frozen=True, slots=True)
class Backlog:
    #: requests queued for the watched models (or the whole proxy queue)
    queued: int
    #: per watched model; empty when reading the total queue depth
    per_model: Mapping[str, int] = field(default_factory=dict)
    #: watched models the proxy does not report (counted as 0; likely a typo in --models)
    missing: tuple[str, ...] = ()
    #: the proxy says its shared store is unreachable and limits are local approximations
    degraded: bool = False


class BacklogSource(Protocol):
    async def read(self) -> Backlog: ...

    async def close(self) -> None: ...


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BacklogError(f"status field {where} is not a count: {value!r}")
    return int(value)


def backlog_from_status(doc: Any, models: Sequence[str] | None = None) -> Backlog:
    """Sum ``models.<m>.queued`` over ``models``; without models, the total ``queue.depth``."""
    if not isinstance(doc, Mapping):
        raise BacklogError("status document is not a JSON object")
    degraded = bool(doc.get("degraded", False))
    if doc.get("hosts") == 0:
        # A pool no proxy has registered in (a wrong Redis URL or key prefix) reads as empty.
        raise BacklogError("no proxy host in the status (hosts: 0): wrong Redis URL or prefix?")
    if not models:
        queue = doc.get("queue")
        if not isinstance(queue, Mapping) or "depth" not in queue:
            raise BacklogError("status document has no queue.depth")
        return Backlog(queued=_count(queue["depth"], "queue.depth"), degraded=degraded)
    table = doc.get("models")
    if not isinstance(table, Mapping):
        raise BacklogError("status document has no models table")
    per_model: dict[str, int] = {}
    missing: list[str] = []
    for name in models:
        entry = table.get(name)
        if entry is None:
            # A model nobody has asked for yet may be absent; it has nothing queued.
            missing.append(name)
            per_model[name] = 0
            continue
        if not isinstance(entry, Mapping) or "queued" not in entry:
            raise BacklogError(f"status entry models.{name} has no 'queued'")
        per_model[name] = _count(entry["queued"], f"models.{name}.queued")
    return Backlog(
        queued=sum(per_model.values()),
        per_model=per_model,
        missing=tuple(missing),
        degraded=degraded,
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
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise BacklogError(f"GET {self.url}: {type(exc).__name__}: {exc}") from exc
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
        except Exception as exc:  # whatever Redis says, the backlog is unknown
            raise BacklogError(f"redis status: {type(exc).__name__}: {exc}") from exc
        return backlog_from_status(doc, self.models)

    async def close(self) -> None:
        return None
