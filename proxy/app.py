"""The proxy: routing, the request path, start-up and graceful shutdown.

One request, admitted path::

    auth -> read body (bounded) -> parse -> route model -> admit (store, may queue)
         -> forward -> relay (plain or stream) -> release (always: permits + token settlement)

Admission is the default: every request with a body (POST, PUT, PATCH) is admitted unless its
normalized path is in ``passthrough_paths``; GET/HEAD/OPTIONS probes and those cheap routes
pass through to an upstream untouched. One ``RequestRecord`` per request feeds metrics and the
access log. All state hangs off the
``Proxy`` object; nothing is module-global. HTTP is served by ``proxy/server.py``, the admin
routes by ``proxy/admin.py``; ``proxy/runner.py`` puts a proxy on its sockets.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from .access_log import AccessLog
from .admin import AdminRoutes, on_admin_listener
from .admission import AdmissionPolicy, requested_max_wait, settlement
from .attribution import AttributionLabels
from .auth import Authenticator, Identity
from .capacity.manager import CapacityManager
from .capacity.metrics import annotate
from .catalog import ModelCatalog
from .config import Config
from .errors import NotFound, ProxyError, ShuttingDown, Throttled
from .events import EventHub
from .families import RouteFamily, admits, family_for
from .flow_metrics import FlowShares
from .forward import (
    QUEUE_MS_HEADER,
    Exchange,
    Forwarder,
    RelayOutcome,
    relay_answer,
    upstream_request_headers,
)
from .keepalive import KeepAlive, QueuePositions, wants_keepalive
from .limits.base import Demand, Grant, LimitStore, Snapshot
from .limits.memory import MemoryStore
from .messages import Request, Response, StreamResponse
from .metrics import ProxyMetrics
from .parse import parse_body
from .paths import checked_target
from .record import CLIENT_GONE, RequestRecord
from .relay_accounting import capacity_sample, tokens_used
from .status import RequestRates, SaturationTracker, attribution_listed, status_document

log = logging.getLogger("llm_throttle")


def make_store(config: Config, policy: AdmissionPolicy) -> LimitStore:
    """The configured store: embedded memory by default, Redis for a ``redis://`` URL."""
    if config.store == "memory":
        return MemoryStore(policy.spec)
    from .limits.redis import RedisStore  # imported only when used

    return RedisStore(policy.spec, config.store, config.redis)


class Proxy:
    """Everything one proxy instance owns; ``dispatch`` is its one handler."""

    def __init__(self, config: Config, store: LimitStore | None = None):
        self.config = config
        self.policy = AdmissionPolicy(config)
        self.capacity = CapacityManager(config)
        self.policy.spec = self.capacity.apply(self.policy.spec)
        self.store = store if store is not None else make_store(config, self.policy)
        self.auth = Authenticator(config)
        self.attribution = AttributionLabels(config.attribution.max_values,
                                             config.attribution.value_idle_s)
        self.forwarder = Forwarder(config.upstreams)
        self.catalog = ModelCatalog(config, self.forwarder)
        self.metrics = ProxyMetrics()
        self.flow_shares = FlowShares()
        self.access_log = AccessLog(config.access_log) if config.access_log.enabled else None
        self.rates = RequestRates()
        self.saturation = SaturationTracker()
        self.clock: Callable[[], float] = time.monotonic
        self.positions = QueuePositions(self.store.snapshot, self._admitted_rate)
        self.draining = False
        #: request ids: unique per proxy instance (random prefix) and cheap (a counter)
        self._id_prefix = uuid.uuid4().hex[:12] + "-"
        self._ids = itertools.count()
        #: ``GET /throttle/events`` subscribers (see ``proxy/events.py``)
        self.events = EventHub(self.status_json, max_subscribers=config.events.max_subscribers,
                               poll_s=config.events.poll_s,
                               keepalive_s=config.events.keepalive_s,
                               stall_s=config.events.stall_s)
        self.admin = AdminRoutes(self)
        #: requests between arrival and the end of their response (graceful shutdown waits)
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        await self.forwarder.start()
        self.capacity.start(self.store)

    async def stop(self) -> None:
        """Graceful: refuse new work, answer the queued 503, let streams finish, release all."""
        self.draining = True
        await self.events.close()  # event streams never end on their own
        await self.store.cancel_waiters(ShuttingDown(retry_after_s=1.0))
        if self.active:
            try:
                await asyncio.wait_for(self._idle.wait(), self.config.shutdown_grace_s)
            except TimeoutError:
                log.warning("shutdown grace period over with %d requests active", self.active)
        await self.capacity.stop()
        await self.store.close()
        await self.forwarder.close()

    # -- state as shown (the admin routes and the event stream read it) -------------------------

    async def snapshot(self) -> Snapshot:
        """The store's snapshot as shown: attribution values bounded (``AttributionLabels``),
        idle ones forgotten with their series."""
        self.metrics.forget_clients(self.attribution.expire())
        return self.attribution.fold(await self.store.snapshot())

    async def status_json(self) -> dict:
        """The ``GET /throttle/status`` document."""
        snapshot = await self.snapshot()
        doc = status_document(snapshot, self.saturation, self.rates,
                              self.config.queue.max_depth, self.config.queue.max_wait_s,
                              attribution_listed=attribution_listed(self.store.spec))
        annotate(doc, self.capacity.status())
        shares = self.flow_shares.shares()
        for name, entry in doc["flows"].items():
            entry["share_last_minute"] = shares.get(name, 0.0)
        return doc

    # -- the request path ------------------------------------------------------------------------

    async def dispatch(self, request: Request) -> Response | StreamResponse:
        """The one entry point: admin routes, else the proxied path; errors become JSON. The
        request's record goes to metrics and the access log once, when it is answered."""
        record = RequestRecord(self.clock(), request.method, request.path)
        self.active += 1
        self._idle.clear()
        try:
            response = await self._route(request, record)
        except ProxyError as exc:
            response = Response.for_error(exc)
        except (asyncio.CancelledError, ConnectionResetError):
            record.status = CLIENT_GONE
            raise
        except Exception:  # a bug: log it, answer shaped, never a bare traceback page
            log.exception("unhandled error on %s %s", request.method, request.path[:200])
            response = Response.for_error(ProxyError("internal error in llm-throttle"))
        finally:
            self.active -= 1
            if not self.active:
                self._idle.set()
            record.finished_at = self.clock()
            if record.status == CLIENT_GONE:
                self._answered(record)
        record.status = response.status
        self._answered(record)
        return response

    def _answered(self, record: RequestRecord) -> None:
        if not record.admin:  # scrapes and health checks are not proxied requests
            self.metrics.observe(record)
        if self.access_log is not None:
            self.access_log.write(record)

    def _route(self, request: Request, record: RequestRecord
               ) -> Awaitable[Response | StreamResponse]:
        """Admin route, admitted, or passed through (see ``proxy/families.py``): the handler's
        awaitable (not awaited here: one coroutine less per request); raises a refusal."""
        admin = self.admin.handler_for(request.path)
        if admin is not None and request.method in ("GET", "HEAD"):
            record.admin = True
            return admin(request)
        if self.draining:
            raise ShuttingDown()
        target = checked_target(request.method, request.target)
        if on_admin_listener(self.config, request):
            raise NotFound("the admin listener serves only /metrics, /throttle/status, "
                           "/throttle/events, /healthz, /upstreams/<name>/metrics")
        path = target.partition("?")[0]  # normalized: what admission and the upstream see
        identity = self.auth.authenticate(request.headers, request.method, path)
        record.client = self.attribution.label(identity)
        if admits(request.method, path, request.body_exists, self.config.passthrough_paths):
            return self._admitted(request, identity, target, family_for(path), record)
        return self._passthrough(request, target, record)

    async def _admitted(self, request: Request, identity: Identity, target: str,
                        family: RouteFamily, record: RequestRecord) -> Response | StreamResponse:
        """Parse, admit (may queue), forward and relay; the permit is released on every path."""
        parsed = parse_body(family, await request.read_body(),
                            request.headers.get("Content-Type", ""))
        route = self.policy.route(parsed.model)
        record.model, record.priority = route.model.name, identity.priority
        demand, reserved = self.policy.demand(route, identity, parsed,
                                             self._id_prefix + str(next(self._ids)),
                                             requested_max_wait(request.headers))
        keepalive = None
        if parsed.stream and wants_keepalive(request.headers,
                                             self._keepalive_configured(identity)):
            queue = self.config.queue
            keepalive = KeepAlive(request, route.model.name, self.positions,
                                  queue.keepalive_after_s, queue.keepalive_interval_s, self.clock)
        try:
            grant = await self._acquire(demand, record)
        except ProxyError as exc:
            if keepalive is None:
                raise
            keepalive.stop()
            if keepalive.response is None:
                raise
            return _ended_with(keepalive.response, exc)  # refused after the head went
        finally:
            if keepalive is not None:
                keepalive.stop()
        started = keepalive.response if keepalive is not None else None
        upstream = self.config.upstreams[grant.option.name]
        record.upstream = upstream.name
        sent = Exchange(request.method, target,
                        upstream_request_headers(request, self.forwarder.injected[upstream.name],
                                                 identity_encoding=True),
                        parsed.body, b"%s: %.1f\r\n" % (QUEUE_MS_HEADER, grant.queued_s * 1000),
                        family.usage, parsed.strip_usage, started)
        outcome = RelayOutcome()
        started_at = self.clock()
        self.capacity.started(upstream.name)
        try:
            if started is None:
                return await self.forwarder.exchange(request, upstream, sent, outcome,
                                                     self.clock)
            try:
                return await self.forwarder.exchange(request, upstream, sent, outcome,
                                                     self.clock)
            except ProxyError as exc:  # the head is sent: tell it in-band
                return _ended_with(started, exc)
        finally:
            used = tokens_used(outcome, reserved)
            grant.used = used  # corrects the flow's fair-share counter
            self.flow_shares.add(demand.priority.name.lower(), demand.flow, used)
            self.store.release_nowait(
                grant, settlement(grant, reserved, used) if grant.charges else ())
            record.upstream_s, record.upstream_failure = outcome.upstream_s, outcome.failure
            record.first_byte_at, record.tokens = outcome.first_byte_at, outcome.usage
            self.capacity.finished(upstream.name, capacity_sample(
                outcome, started_at, self.clock(), len(parsed.body)))

    def _keepalive_configured(self, identity: Identity) -> bool:
        client = self.config.clients.get(identity.name)
        return client is not None and client.queue_keepalive

    def _admitted_rate(self, model: str) -> float:
        """Requests per second this host admitted for ``model`` over the last minute."""
        window = self.rates.admitted.get(model)
        return window.rate() if window is not None else 0.0

    async def _acquire(self, demand: Demand, record: RequestRecord) -> Grant:
        """The grant (may queue); a refusal is recorded and raised."""
        try:
            grant = await self.store.acquire(demand)
        except Throttled as exc:
            self.rates.count(self.rates.rejected, record.model)
            record.rejected = exc.code or "throttled"
            raise
        self.rates.count(self.rates.admitted, record.model)
        record.queue_s = grant.queued_s
        return grant

    async def _passthrough(self, request: Request, target: str,
                           record: RequestRecord) -> Response | StreamResponse:
        if self.catalog.serves(request.method, request.path):  # every upstream's models
            return await self.catalog.answer(request.path)
        upstream = self.config.default_passthrough
        record.upstream = upstream.name
        body = await request.read_body() if request.body_exists else None
        headers = upstream_request_headers(request, self.forwarder.injected[upstream.name],
                                           identity_encoding=False)
        upstream_response = await self.forwarder.open(
            upstream, request.method, target, headers, body)
        try:
            return await relay_answer(request, upstream_response, RelayOutcome(), self.clock,
                                      None)
        finally:
            upstream_response.close()


def _ended_with(response: StreamResponse, error: ProxyError) -> StreamResponse:
    """An event stream already answered 200 ends with ``error`` as its SSE error event."""
    try:
        response.write(error.sse_event())
        response.finish()
    except ConnectionResetError:
        pass  # the client left meanwhile: nobody to tell
    return response
