"""The companion's own ``/metrics`` (a private registry, never the process-global one) and
``/status`` JSON, served on a port of its own so it can run beside the proxy."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .loop import Dispatcher, TickReport


class DispatcherMetrics:
    """All series of one companion, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = "llm_throttle_dispatch_"
        self.ticks = Counter(p + "ticks", "Dispatcher ticks by outcome.", ["outcome"], registry=r)
        self.tick_seconds = Histogram(p + "tick_seconds", "Duration of one tick.", registry=r,
                                      buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120))
        self.last_tick = Gauge(p + "last_tick_timestamp_seconds",
                               "Unix time of the last tick.", registry=r)
        self.holding = Gauge(p + "holding", "1 while holding for the backlog to drain.",
                             registry=r)
        self.hold_transitions = Counter(p + "hold_transitions", "Hold state changes.", ["to"],
                                        registry=r)
        self.backlog = Gauge(p + "backlog", "Requests queued at the proxy for the watched "
                             "models (NaN when unknown).", registry=r)
        self.free_slots = Gauge(p + "free_slots", "Slots under --max-running at the last tick.",
                                registry=r)
        self.running = Gauge(p + "running_tasks", "Running tasks per board.", ["board"],
                             registry=r)
        self.ready = Gauge(p + "ready_tasks", "Ready tasks per board.", ["board"], registry=r)
        self.spawned = Counter(p + "spawned", "Workers started per board.", ["board"],
                               registry=r)
        self.passes = Counter(p + "passes", "`hermes kanban dispatch` calls per board and kind.",
                              ["board", "kind"], registry=r)
        self.hermes_failures = Counter(p + "hermes_failures",
                                       "Failed `hermes` calls (bad output, stderr, timeout).",
                                       ["command"], registry=r)

    def observe(self, report: TickReport) -> None:
        self.ticks.labels(outcome="ok" if report.ok else "failed").inc()
        self.tick_seconds.observe(report.duration_s)
        self.last_tick.set(report.at)
        self.holding.set(1 if report.holding else 0)
        self.backlog.set(float("nan") if report.backlog is None else report.backlog)
        self.free_slots.set(report.free_slots)
        for slug, board in report.boards.items():
            self.running.labels(board=slug).set(board.running)
            self.ready.labels(board=slug).set(board.ready)
            if board.spawned:
                self.spawned.labels(board=slug).inc(len(board.spawned))
            if board.max_arg is not None and not report.dry_run and board.error is None \
                    and board.skipped is None:
                kind = "maintenance" if board.maintenance else "spawn"
                self.passes.labels(board=slug, kind=kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


STATUS_APP_KEY: web.AppKey[Dispatcher] = web.AppKey("dispatcher")


async def _metrics(request: web.Request) -> web.Response:
    dispatcher = request.app[STATUS_APP_KEY]
    return web.Response(body=dispatcher.metrics.render(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATUS_APP_KEY].status())


async def _healthz(request: web.Request) -> web.Response:
    """200 while ticks keep coming; 503 once none came for three intervals."""
    dispatcher = request.app[STATUS_APP_KEY]
    last = dispatcher.last
    age = None if last is None else time.time() - last.at
    limit = 3 * dispatcher.settings.interval_s + dispatcher.hermes.timeout_s
    fresh = age is not None and age <= limit
    body: dict[str, Any] = {"status": "ok" if fresh else "stale", "last_tick_age_s": age,
                            "last_tick_ok": last.ok if last else None}
    return web.json_response(body, status=200 if fresh or last is None else 503)


def status_app(dispatcher: Dispatcher) -> web.Application:
    app = web.Application()
    app[STATUS_APP_KEY] = dispatcher
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/status", _status)
    app.router.add_get("/healthz", _healthz)
    return app
