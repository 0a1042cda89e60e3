"""The admin routes: status, events, metrics, health, and the upstreams' own metrics.

They are served only on ``GET``/``HEAD`` (``proxy/app.py`` routes them), only on the admin
listener when ``admin_listen`` is set, and behind ``admin_key`` when one is set; a health probe
on the admin listener needs no key. They read the proxy through ``AdminHost`` each time, so a
configuration reload (a new admin key, new queue bounds) applies to the next request.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Protocol

from .auth import bearer_token
from .capacity.manager import CapacityManager
from .capacity.metrics import CapacityGauges
from .config import Config
from .errors import AuthenticationFailed, NotFound
from .events import EVENTS_PATH, EventHub
from .flow_metrics import FlowCollector
from .forward import Forwarder
from .limits.base import LimitStore, Snapshot
from .messages import Request, Response, StreamResponse
from .metrics import ProxyMetrics
from .status import render_table
from .upstream_metrics import fetch_upstream_metrics, is_upstream_metrics_path, upstream_of

AdminHandler = Callable[[Request], Awaitable[Response | StreamResponse]]


def on_admin_listener(config: Config, request: Request) -> bool:
    """The request arrived on the admin listener (never true without ``admin_listen``)."""
    admin = config.admin_listen
    return bool(admin and request.local_port == admin[1])


class AdminHost(Protocol):
    """What the admin routes read from their proxy."""

    config: Config
    store: LimitStore
    metrics: ProxyMetrics
    capacity: CapacityManager
    forwarder: Forwarder
    events: EventHub
    draining: bool

    async def snapshot(self) -> Snapshot: ...

    async def status_json(self) -> dict: ...


class AdminRoutes:
    """The admin handlers of one proxy, and the metrics only a scrape refreshes."""

    def __init__(self, host: AdminHost):
        self.host = host
        registry = host.metrics.registry
        self.capacity_gauges = CapacityGauges(registry)
        self.flow_collector = FlowCollector()
        registry.register(self.flow_collector)
        self._routes: dict[str, AdminHandler] = {
            "/throttle/status": self.handle_status, "/metrics": self.handle_metrics,
            "/healthz": self.handle_healthz, EVENTS_PATH: self.handle_events,
        }

    def handler_for(self, path: str) -> AdminHandler | None:
        """The handler of an admin path, else None (the path is proxied)."""
        handler = self._routes.get(path)
        if handler is None and is_upstream_metrics_path(path):
            return self.handle_upstream_metrics
        return handler

    def check_admin(self, request: Request, *, probe: bool = False) -> None:
        """Admin routes: only on the admin listener when one is set, and behind the admin key;
        a health ``probe`` on the admin listener needs no key (probes that cannot send one
        use ``admin_listen``, a private address)."""
        config = self.host.config
        on_admin_port = on_admin_listener(config, request)
        if config.admin_listen and not on_admin_port:
            raise NotFound(f"no route for {request.path}")
        if probe and on_admin_port:
            return
        if config.admin_key:
            token = bearer_token(request.headers) or ""
            if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"),
                                       config.admin_key.encode()):
                raise AuthenticationFailed("admin key required for this route")

    async def handle_status(self, request: Request) -> Response:
        self.check_admin(request)
        doc = await self.host.status_json()
        if request.query.get("format") == "table":
            return Response.text(render_table(doc) + "\n")
        return Response.json_bytes(json.dumps(doc).encode())

    async def handle_events(self, request: Request) -> Response | StreamResponse:
        self.check_admin(request)
        if request.method == "HEAD":
            return Response(200, b"", [("Content-Type", "text/event-stream")])
        return await self.host.events.stream(request)

    async def handle_metrics(self, request: Request | None) -> Response:
        """The Prometheus exposition; ``request=None`` skips the admin check (tests)."""
        if request is not None:
            self.check_admin(request)
        host = self.host
        snapshot = await host.snapshot()
        host.metrics.refresh(snapshot)
        self.flow_collector.update(snapshot.flows)
        self.capacity_gauges.refresh(host.capacity.status())
        return Response(200, host.metrics.render(),
                        [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])

    async def handle_upstream_metrics(self, request: Request) -> Response:
        self.check_admin(request)
        upstream = upstream_of(self.host.config, request.path)
        return await fetch_upstream_metrics(self.host.forwarder, upstream, request)

    async def handle_healthz(self, request: Request) -> Response:
        self.check_admin(request, probe=True)
        if self.host.draining:
            return Response.json_bytes(b'{"status": "draining"}', status=503)
        store = self.host.store
        reason = store.degraded_reason  # still serving, under the degraded policy
        body = {"status": "degraded", "store": store.name, "reason": reason} if reason \
            else {"status": "ok", "store": store.name}
        return Response.json_bytes(json.dumps(body).encode())
