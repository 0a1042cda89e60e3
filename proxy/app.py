"""The proxy: routes, the request path, start-up and graceful shutdown.

One request, admitted path::

    auth -> read body (bounded) -> parse -> route model -> admit (store, may queue)
         -> forward -> relay (plain or stream) -> release (always: permits + token settlement)

Admission is the default: every request with a body (POST, PUT, PATCH) is admitted unless its
normalized path is in ``passthrough_paths``; GET/HEAD/OPTIONS probes and those cheap routes
pass through to an upstream untouched. One ``RequestRecord`` per request feeds metrics and the
access log. All state hangs off the
``Proxy`` object; nothing is module-global. HTTP is served by ``proxy/server.py``.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .access_log import AccessLog
from .admission import AdmissionPolicy, requested_max_wait, settlement
from .attribution import AttributionLabels
from .auth import Authenticator, Identity, bearer_token
from .capacity.manager import CapacityManager
from .capacity.metrics import CapacityGauges, annotate
from .capacity.signals import Outcome, make_sample
from .catalog import ModelCatalog
from .config import Config
from .errors import (
    AuthenticationFailed,
    NotFound,
    ProxyError,
    ShuttingDown,
    Throttled,
    UpstreamTimeout,
)
from .events import EVENTS_PATH, EventHub
from .families import RouteFamily, admits, family_for
from .flow_metrics import FlowCollector, FlowShares
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
from .server import HttpServer, ServerLimits
from .status import RequestRates, SaturationTracker, render_table, status_document
from .upstream_metrics import fetch_upstream_metrics, is_upstream_metrics_path, upstream_of

log = logging.getLogger("llm_throttle")

ADMIN_PATHS = ("/throttle/status", EVENTS_PATH, "/metrics", "/healthz")


def make_store(config: Config, policy: AdmissionPolicy) -> LimitStore:
    """The configured store: embedded memory by default, Redis for a ``redis://`` URL."""
    if config.store == "memory":
        return MemoryStore(policy.spec)
    from .limits.redis import RedisStore  # imported only when used

    return RedisStore(policy.spec, config.store, config.redis)


class Proxy:
    """Everything one proxy instance owns; the handlers are its methods."""

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
        self.capacity_gauges = CapacityGauges(self.metrics.registry)
        self.flow_collector = FlowCollector()
        self.metrics.registry.register(self.flow_collector)
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
        self._admin_routes: dict[str, Callable[[Request], Awaitable[Response]]] = {
            "/throttle/status": self.handle_status, "/metrics": self.handle_metrics,
            "/healthz": self.handle_healthz, EVENTS_PATH: self.handle_events,
        }
        #: ``GET /throttle/events`` subscribers (see ``proxy/events.py``)
        self.events = EventHub(self.status_json, max_subscribers=config.events.max_subscribers,
                               poll_s=config.events.poll_s,
                               keepalive_s=config.events.keepalive_s,
                               stall_s=config.events.stall_s)
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

    # -- admin endpoints -----------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        """The store's snapshot as shown: attribution values bounded (``AttributionLabels``),
        idle ones forgotten with their series."""
        self.metrics.forget_clients(self.attribution.expire())
        return self.attribution.fold(await self.store.snapshot())

    async def status_json(self) -> dict:
        snapshot = await self.snapshot()
        doc = status_document(snapshot, self.saturation, self.rates,
                              self.config.queue.max_depth, self.config.queue.max_wait_s)
        annotate(doc, self.capacity.status())
        shares = self.flow_shares.shares()
        for name, entry in doc["flows"].items():
            entry["share_last_minute"] = shares.get(name, 0.0)
        return doc

    def _arrived_on_admin_port(self, request: Request) -> bool:
        admin = self.config.admin_listen
        return bool(admin and request.local_port == admin[1])

    def check_admin(self, request: Request, *, probe: bool = False) -> None:
        """Admin routes: only on the admin listener when one is set, and behind the admin key;
        a health ``probe`` on the admin listener needs no key (probes that cannot send one
        use ``admin_listen``, a private address)."""
        on_admin_port = self._arrived_on_admin_port(request)
        if self.config.admin_listen and not on_admin_port:
            raise NotFound(f"no route for {request.path}")
        if probe and on_admin_port:
            return
        if self.config.admin_key:
            token = bearer_token(request.headers) or ""
            if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"),
                                       self.config.admin_key.encode()):
                raise AuthenticationFailed("admin key required for this route")

    async def handle_status(self, request: Request) -> Response:
        self.check_admin(request)
        doc = await self.status_json()
        if request.query.get("format") == "table":
            return Response.text(render_table(doc) + "\n")
        return Response.json_bytes(json.dumps(doc).encode())

    async def handle_events(self, request: Request) -> Response | StreamResponse:
        self.check_admin(request)
        if request.method == "HEAD":
            return Response(200, b"", [("Content-Type", "text/event-stream")])
        return await self.events.stream(request)

    async def handle_metrics(self, request: Request | None) -> Response:
        if request is not None:
            self.check_admin(request)
        snapshot = await self.snapshot()
        self.metrics.refresh(snapshot)
        self.flow_collector.update(snapshot.flows)
        self.capacity_gauges.refresh(self.capacity.status())
        return Response(200, self.metrics.render(),
                        [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])

    async def handle_upstream_metrics(self, request: Request) -> Response:
        self.check_admin(request)
        upstream = upstream_of(self.config, request.path)
        return await fetch_upstream_metrics(self.forwarder, upstream, request)

    async def handle_healthz(self, request: Request) -> Response:
        self.check_admin(request, probe=True)
        if self.draining:
            return Response.json_bytes(b'{"status": "draining"}', status=503)
        reason = self.store.degraded_reason  # still serving, under the degraded policy
        body = {"status": "degraded", "store": self.store.name, "reason": reason} if reason \
            else {"status": "ok", "store": self.store.name}
        return Response.json_bytes(json.dumps(body).encode())

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
        admin = self._admin_routes.get(request.path)
        if admin is None and is_upstream_metrics_path(request.path):
            admin = self.handle_upstream_metrics
        if admin is not None and request.method in ("GET", "HEAD"):
            record.admin = True
            return admin(request)
        if self.draining:
            raise ShuttingDown()
        target = checked_target(request.method, request.target)
        if self.config.admin_listen and self._arrived_on_admin_port(request):
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
            used = self._tokens_used(outcome, reserved)
            grant.used = used  # corrects the flow's fair-share counter
            self.flow_shares.add(demand.priority.name.lower(), demand.flow, used)
            self.store.release_nowait(
                grant, settlement(grant, reserved, used) if grant.charges else ())
            record.upstream_s, record.upstream_failure = outcome.upstream_s, outcome.failure
            record.first_byte_at, record.tokens = outcome.first_byte_at, outcome.usage
            self._sample(upstream.name, outcome, started_at, len(parsed.body))

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

    def _sample(self, upstream: str, outcome: RelayOutcome, started: float,
                body_bytes: int) -> None:
        """What this request says about the upstream's capacity (adaptive caps)."""
        if outcome.failure == UpstreamTimeout.code:
            failed = Outcome.TIMEOUT
        elif outcome.failure is not None and outcome.status == 0:
            failed = Outcome.CONNECTION_ERROR  # no answer at all
        elif outcome.client_gone:
            failed = Outcome.IGNORED
        elif outcome.status in (429, 503):
            failed = Outcome.OVERLOADED
        elif outcome.status >= 400 or outcome.status == 0:
            failed = Outcome.IGNORED
        elif not outcome.complete:
            failed = Outcome.CONNECTION_ERROR  # the upstream broke off mid-stream
        else:
            failed = Outcome.OK
        if outcome.usage is not None:
            prompt, completion = outcome.usage
        else:
            prompt, completion = body_bytes // 4, outcome.chunks
        self.capacity.finished(upstream, make_sample(
            failed, started, self.clock(), outcome.first_byte_at, prompt, completion))

    @staticmethod
    def _tokens_used(outcome: RelayOutcome, reserved: int) -> int:
        """Real usage when known; what a cut-short stream generated; else the reservation."""
        if outcome.usage is not None:
            return outcome.usage[0] + outcome.usage[1]
        if outcome.status == 0 or outcome.status >= 400:
            return 0  # nothing was generated
        if outcome.chunks:
            return outcome.chunks + 1
        return reserved

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


@dataclass
class RunningProxy:
    """A proxy listening on its sockets (tests, the CLI)."""

    proxy: Proxy
    server: HttpServer
    url: str

    async def close(self) -> None:
        """Graceful: stop accepting, drain (see ``Proxy.stop``), then close connections."""
        self.server.stop_listening()
        await self.proxy.stop()
        await self.server.close()


async def start_proxy(config: Config, host: str | None = None, port: int | None = None,
                      store: LimitStore | None = None) -> RunningProxy:
    """Start listening; ``port=0`` picks a free port (see ``RunningProxy.url``)."""
    proxy = Proxy(config, store)
    await proxy.start()
    server = HttpServer(proxy.dispatch, ServerLimits(
        max_body_bytes=config.max_body_bytes, body_read_timeout_s=config.body_read_timeout_s,
        header_read_timeout_s=config.header_read_timeout_s,
        max_connections=config.max_connections))
    try:
        bound_host, bound_port = await server.listen(
            host or config.listen_host, config.listen_port if port is None else port)
        if config.admin_listen:
            await server.listen(*config.admin_listen, admin=True)
    except BaseException:
        await server.close()
        await proxy.stop()
        raise
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return RunningProxy(proxy, server, f"http://{shown}:{bound_port}")


async def serve_forever(config: Config, host: str | None = None, port: int | None = None,
                        on_ready: Callable[[str], None] | None = None,
                        config_path: str | None = None) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully (see ``Proxy.stop``); SIGHUP
    reloads ``config_path`` (see ``proxy/reload.py``)."""
    from .reload import reload_file

    running = await start_proxy(config, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()
    if config_path is not None:
        def reload() -> None:
            task = loop.create_task(reload_file(running.proxy, config_path))
            reloads.add(task)
            task.add_done_callback(reloads.discard)
        loop.add_signal_handler(signal.SIGHUP, reload)
    if on_ready is not None:
        on_ready(running.url)
    try:
        await stop.wait()
        log.info("shutting down: draining up to %gs", config.shutdown_grace_s)
    finally:
        await running.close()


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=True)


def _ended_with(response: StreamResponse, error: ProxyError) -> StreamResponse:
    """An event stream already answered 200 ends with ``error`` as its SSE error event."""
    try:
        response.write(error.sse_event())
        response.finish()
    except ConnectionResetError:
        pass  # the client left meanwhile: nobody to tell
    return response
