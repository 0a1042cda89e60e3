"""The companion's HTTP side: ``/metrics``, ``/status`` and ``/healthz`` on a port of its own,
so that it can run beside the proxy; it reads a running :class:`.loop.Dispatcher`."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .loop import Dispatcher

STATUS_APP_KEY: web.AppKey[Dispatcher] = web.AppKey("dispatcher")


async def _metrics(request: web.Request) -> web.Response:
    dispatcher = request.app[STATUS_APP_KEY]
    return web.Response(body=dispatcher.metrics.render(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATUS_APP_KEY].status())


async def _healthz(request: web.Request) -> web.Response:
    """200 while ticks keep coming and the proxy can be read; 503 once no tick came for three
    intervals, or ``--unhealthy-after`` reads of the proxy failed in a row."""
    dispatcher = request.app[STATUS_APP_KEY]
    last = dispatcher.last
    age = None if last is None else time.time() - last.at
    limit = 3 * dispatcher.settings.interval_s + dispatcher.hermes.timeout_s
    fresh = age is None or age <= limit
    healthy = fresh and dispatcher.healthy
    status = "ok" if healthy else ("stale" if not fresh else "proxy_unreadable")
    body: dict[str, Any] = {"status": status, "last_tick_age_s": age,
                            "last_tick_ok": last.ok if last else None,
                            "failed_reads": dispatcher.failed_reads,
                            "hold_reason": dispatcher.hold_reason.value
                            if dispatcher.hold_reason else None}
    return web.json_response(body, status=200 if healthy else 503)


def status_app(dispatcher: Dispatcher) -> web.Application:
    app = web.Application()
    app[STATUS_APP_KEY] = dispatcher
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/status", _status)
    app.router.add_get("/healthz", _healthz)
    return app
