"""``GET /v1/models`` for the whole fleet: the configured models and every upstream's list.

Passing ``/v1/models`` through to one upstream showed only that upstream's models, so chat
UIs and Hermes' model probe missed the rest, and ``/v1/models/<id>`` 404'd for them. Here
every upstream is asked at once (with its own key), the answers are merged with the
configured model names (de-duplicated; an upstream's own entry wins, it carries more
detail), and the result is cached for a few seconds so a UI that polls does not multiply
requests. An upstream that fails or answers nonsense is left out, never an error, unless
nothing at all is known.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from .config import WILDCARD_MODEL, Config, UpstreamConfig
from .errors import ModelNotFound, ProxyError, UpstreamError
from .forward import Forwarder
from .messages import Response

log = logging.getLogger("llm_throttle.catalog")

MODELS_PATH = "/v1/models"
_MODEL_PREFIX = MODELS_PATH + "/"


class ModelCatalog:
    """The merged model list of one proxy, refreshed at most once per ``ttl_s``."""

    #: how long a merged list is served before the upstreams are asked again
    ttl_s = 5.0
    #: how long one upstream may take to answer its list
    fetch_timeout_s = 5.0

    def __init__(self, config: Config, forwarder: Forwarder,
                 clock: Callable[[], float] = time.monotonic):
        self._config = config
        self._forwarder = forwarder
        self._clock = clock
        self._cached: list[dict[str, Any]] | None = None
        self._cached_at = 0.0
        self._refreshing: asyncio.Future[list[dict[str, Any]]] | None = None

    @staticmethod
    def serves(method: str, path: str) -> bool:
        return method in ("GET", "HEAD") and (
            path == MODELS_PATH or (path.startswith(_MODEL_PREFIX) and len(path) > 11))

    async def answer(self, path: str) -> Response:
        """The list (``/v1/models``) or one entry (``/v1/models/<id>``)."""
        models = await self.models()
        if path == MODELS_PATH:
            body = {"object": "list", "data": models}
        else:
            wanted = path[len(_MODEL_PREFIX):]
            found = next((m for m in models if m.get("id") == wanted), None)
            if found is None:
                raise ModelNotFound(f"The model '{wanted}' does not exist")
            body = found
        return Response.json_bytes(json.dumps(body).encode())

    async def models(self) -> list[dict[str, Any]]:
        if self._cached is not None and self._clock() - self._cached_at < self.ttl_s:
            return self._cached
        if self._refreshing is None:  # one refresh at a time; concurrent callers share it
            self._refreshing = asyncio.ensure_future(self._refresh())
            self._refreshing.add_done_callback(self._refresh_done)
        return await asyncio.shield(self._refreshing)

    def _refresh_done(self, future: asyncio.Future[list[dict[str, Any]]]) -> None:
        self._refreshing = None
        if not future.cancelled() and future.exception() is None:
            self._cached, self._cached_at = future.result(), self._clock()

    async def _refresh(self) -> list[dict[str, Any]]:
        upstreams = list(self._config.upstreams.values())
        answers = await asyncio.gather(*(self._fetch(up) for up in upstreams))
        merged: dict[str, dict[str, Any]] = {
            name: {"id": name, "object": "model", "created": 0, "owned_by": "llm-throttle"}
            for name in self._config.models if name != WILDCARD_MODEL
        }
        from_upstream: set[str] = set()
        for entries in answers:
            for entry in entries or ():
                model_id = entry["id"]
                if model_id not in from_upstream:
                    merged[model_id] = entry
                    from_upstream.add(model_id)
        if not merged and all(entries is None for entries in answers):
            raise UpstreamError("no upstream answered /v1/models")
        return list(merged.values())

    async def _fetch(self, upstream: UpstreamConfig) -> list[dict[str, Any]] | None:
        """One upstream's ``data`` entries (those with a string ``id``); None if it failed."""
        headers = self._forwarder.injected[upstream.name] + b"Accept: application/json\r\n"
        try:
            async with asyncio.timeout(self.fetch_timeout_s):
                response = await self._forwarder.open(upstream, "GET", MODELS_PATH, headers,
                                                      None)
                try:
                    status, body = response.status, await response.read()
                finally:
                    response.close()
            if status != 200:
                raise ValueError(f"status {status}")
            data = json.loads(body).get("data")
            if not isinstance(data, list):
                raise TypeError("no 'data' list")
        except (ProxyError, TimeoutError, ValueError, TypeError, AttributeError) as exc:
            log.info("upstream %s: /v1/models left out: %s", upstream.name, exc)
            return None
        return [e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str)]
