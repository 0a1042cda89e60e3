"""The aiohttp application: routes, the request path, start-up and graceful shutdown.

One request, admitted path::

    auth -> read body (bounded) -> parse -> route model -> admit (store, may queue)
         -> forward -> relay (plain or stream) -> release (always: permits + token settlement)

Every other path is passed through to an upstream untouched. All state hangs off the
``Proxy`` object stored on the application; nothing is module-global.
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

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from .admission import AdmissionPolicy, settlement
from .auth import Authenticator, Identity, bearer_token
from .config import Config, UpstreamConfig
from .errors import (
    AuthenticationFailed,
    BadRequest,
    BodyTooLarge,
    NotFound,
    ProxyError,
    RequestTimeout,
    ShuttingDown,
    Throttled,
)
from .forward import (
    Forwarder,
    RelayOutcome,
    relay_plain,
    relay_stream,
    upstream_request_headers,
)
from .limits.base import LimitStore
from .limits.memory import MemoryStore
from .metrics import ProxyMetrics
from .parse import ParsedRequest, is_admitted_path, parse_body
from .paths import checked_target
from .status import RequestRates, SaturationTracker, render_table, status_document
from .tokens import SSEUsageTap, usage_from_body

log = logging.getLogger("llm_throttle")

ADMIN_PATHS = ("/throttle/status", "/metrics", "/healthz")
MODEL_LABEL = "llm_throttle.model"
QUEUE_MS_HEADER = "x-llm-throttle-queue-ms"
CLIENT_LABEL = "llm_throttle.client"


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
        self.store = store if store is not None else make_store(config, self.policy)
        self.auth = Authenticator(config)
        self.forwarder = Forwarder(config.upstreams)
        self.metrics = ProxyMetrics()
        self.rates = RequestRates()
        self.saturation = SaturationTracker()
        self.clock: Callable[[], float] = time.monotonic
        self.draining = False
        #: request ids: unique per proxy instance (random prefix) and cheap (a counter)
        self._id_prefix = uuid.uuid4().hex[:12] + "-"
        self._ids = itertools.count()
        self._admin_routes: dict[str, Callable[[web.BaseRequest], Awaitable[web.Response]]] = {
            "/throttle/status": self.handle_status, "/metrics": self.handle_metrics,
            "/healthz": self.handle_healthz,
        }
        #: requests between arrival and the end of their response (graceful shutdown waits)
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        await self.forwarder.start()

    async def stop(self) -> None:
        """Graceful: refuse new work, answer the queued 503, let streams finish, release all."""
        self.draining = True
        await self.store.cancel_waiters(ShuttingDown(retry_after_s=1.0))
        if self.active:
            try:
                await asyncio.wait_for(self._idle.wait(), self.config.shutdown_grace_s)
            except TimeoutError:
                log.warning("shutdown grace period over with %d requests active", self.active)
        await self.store.close()
        await self.forwarder.close()

    # -- admin endpoints -----------------------------------------------------------------------

    async def status_json(self) -> dict:
        snapshot = await self.store.snapshot()
        return status_document(snapshot, self.saturation, self.rates,
                               self.config.queue.max_depth, self.config.queue.max_wait_s)

    def _arrived_on_admin_port(self, request: web.BaseRequest) -> bool:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        admin = self.config.admin_listen
        return bool(admin and sockname and sockname[1] == admin[1])

    def check_admin(self, request: web.BaseRequest) -> None:
        """Admin routes: only on the admin listener when one is set, and behind the admin key."""
        if self.config.admin_listen and not self._arrived_on_admin_port(request):
            raise NotFound(f"no route for {request.path}")
        if self.config.admin_key:
            token = bearer_token(request.headers) or ""
            if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"),
                                       self.config.admin_key.encode()):
                raise AuthenticationFailed("admin key required for this route")

    async def handle_status(self, request: web.BaseRequest) -> web.Response:
        self.check_admin(request)
        doc = await self.status_json()
        if request.query.get("format") == "table":
            return web.Response(text=render_table(doc) + "\n")
        return web.json_response(doc)

    async def handle_metrics(self, request: web.BaseRequest | None) -> web.Response:
        if request is not None:
            self.check_admin(request)
        self.metrics.refresh(await self.store.snapshot())
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def handle_healthz(self, request: web.BaseRequest) -> web.Response:
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ok", "store": self.store.name})

    # -- the proxied paths -----------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.draining:
            raise ShuttingDown()
        target = checked_target(request.method, request.raw_path)
        if self.config.admin_listen and self._arrived_on_admin_port(request):
            raise NotFound("the admin listener serves only /metrics, /throttle/status, /healthz")
        identity = self.auth.authenticate(request.headers)
        request[CLIENT_LABEL] = identity.label
        self.active += 1
        self._idle.clear()
        try:
            if request.method == "POST" and is_admitted_path(request.path):
                return await self._admitted(request, identity, target)
            return await self._passthrough(request, target)
        finally:
            self.active -= 1
            if not self.active:
                self._idle.set()

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BodyTooLarge(f"request body of {request.content_length} bytes is over the "
                               f"{limit}-byte limit")
        try:
            if request.content.is_eof():  # the whole body came with the headers: no timer
                return await request.read()
            async with asyncio.timeout(self.config.body_read_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLarge(f"request body is over the {limit}-byte limit") from None
        except RequestPayloadError:
            raise BadRequest("request body could not be read (bad chunking or a body that is "
                             "not in its Content-Encoding)", code="invalid_body") from None
        except TimeoutError:
            raise RequestTimeout(
                f"request body not received within {self.config.body_read_timeout_s:g}s"
            ) from None

    async def _admitted(self, request: web.BaseRequest, identity: Identity,
                        target: str) -> web.StreamResponse:
        arrival = self.clock()
        parsed = parse_body(request.path, await self._read_body(request))
        route = self.policy.route(parsed.model)
        model = route.model.name
        request[MODEL_LABEL] = model
        demand, reserved = self.policy.demand(route, identity, parsed,
                                             self._id_prefix + str(next(self._ids)))
        try:
            grant = await self.store.acquire(demand)
        except Throttled as exc:
            self.rates.count(self.rates.rejected, model)
            self.metrics.child(self.metrics.rejections, model, exc.code or "throttled").inc()
            raise
        self.rates.count(self.rates.admitted, model)
        self.metrics.child(self.metrics.queue_wait, model, demand.priority.name.lower()).observe(
            grant.queued_s)
        upstream = self.config.upstreams[grant.option.name]
        outcome = RelayOutcome()
        try:
            return await self._forward_admitted(request, target, parsed, upstream, outcome,
                                                arrival, model, grant.queued_s)
        finally:
            used = self._tokens_used(outcome, reserved)
            self.store.release_nowait(grant, settlement(grant, reserved, used))
            if outcome.usage is not None:
                client = identity.label
                metrics = self.metrics
                metrics.child(metrics.tokens, model, client, "prompt").inc(outcome.usage[0])
                metrics.child(metrics.tokens, model, client, "completion").inc(outcome.usage[1])

    async def _forward_admitted(
        self, request: web.BaseRequest, target: str, parsed: ParsedRequest,
        upstream: UpstreamConfig, outcome: RelayOutcome, arrival: float, model: str,
        queued_s: float,
    ) -> web.StreamResponse:
        headers = upstream_request_headers(request.headers, upstream, identity_encoding=True)
        started = self.clock()
        try:
            upstream_response = await self.forwarder.open(
                upstream, request.method, target, headers, parsed.body)
        except ProxyError as exc:
            self.metrics.child(self.metrics.upstream_errors, upstream.name,
                               exc.code or "error").inc()
            raise
        async with upstream_response:
            self.metrics.child(self.metrics.upstream_latency, upstream.name).observe(
                self.clock() - started)
            if upstream_response.status in (429, 503):
                self.metrics.child(self.metrics.upstream_errors, upstream.name,
                                   str(upstream_response.status)).inc()
            content_type = upstream_response.headers.get("Content-Type", "")
            # How long admission made it wait: lets clients and load tests separate queue
            # time from service time.
            extra = {QUEUE_MS_HEADER: str(round(queued_s * 1000, 1))}
            if parsed.stream and content_type.startswith("text/event-stream"):
                tap = None
                if "Content-Encoding" not in upstream_response.headers:
                    tap = SSEUsageTap(parsed.strip_usage)
                response = await relay_stream(request, upstream_response, outcome, tap,
                                              self.clock, extra)
                if outcome.first_byte_at is not None:
                    self.metrics.child(self.metrics.ttft, model).observe(
                        outcome.first_byte_at - arrival)
                return response
            return await relay_plain(upstream_response, outcome, usage_from_body, extra)

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

    async def _passthrough(self, request: web.BaseRequest, target: str) -> web.StreamResponse:
        upstream = self.config.default_passthrough
        body = await self._read_body(request) if request.body_exists else None
        headers = upstream_request_headers(request.headers, upstream, identity_encoding=False)
        upstream_response = await self.forwarder.open(
            upstream, request.method, target, headers, body)
        outcome = RelayOutcome()
        async with upstream_response:
            content_type = upstream_response.headers.get("Content-Type", "")
            if content_type.startswith("text/event-stream") or \
                    upstream_response.headers.get("Transfer-Encoding") == "chunked":
                return await relay_stream(request, upstream_response, outcome, None, self.clock)
            return await relay_plain(upstream_response, outcome, None)


# -- serving ------------------------------------------------------------------------------

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        """The one entry point: admin routes, else the proxied path; errors become JSON."""
        try:
            admin = self._admin_routes.get(request.path)
            if admin is not None and request.method in ("GET", "HEAD"):
                response = await admin(request)
            else:
                response = await self.handle(request)
        except ProxyError as exc:
            response = error_response(exc)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:  # a bug: log it, answer shaped, never a bare traceback page
            log.exception("unhandled error on %s %s", request.method, request.path[:200])
            response = error_response(ProxyError("internal error in llm-throttle"))
        self.metrics.child(
            self.metrics.requests, request.get(MODEL_LABEL, "-"), request.get(CLIENT_LABEL, "-"),
            str(response.status),
        ).inc()
        return response



def error_response(exc: ProxyError) -> web.Response:
    return web.Response(
        status=exc.status,
        body=exc.to_bytes(),
        content_type="application/json",
        headers=exc.headers(),
    )


def create_server(proxy: Proxy) -> web.Server:
    """aiohttp's low-level server around ``Proxy.dispatch``.

    Why not ``web.Application``: the router, middleware chain and per-request ``Request``
    copy cost ~0.07 ms CPU per request here, and the proxy has one route.
    """
    loop = asyncio.get_running_loop()
    max_body = proxy.config.max_body_bytes

    def make_request(message, payload, protocol, writer, task):  # type: ignore[no-untyped-def]
        return web.BaseRequest(message, payload, protocol, writer, task, loop,
                               client_max_size=max_body)

    # keepalive_timeout also bounds how long a new connection may take to send its headers
    # (aiohttp closes a connection still without a whole request then): slowloris guard.
    return web.Server(proxy.dispatch, request_factory=make_request, handler_cancellation=True,
                      access_log=None, max_field_size=16384, max_headers=128,
                      keepalive_timeout=proxy.config.header_read_timeout_s)


def create_app(config: Config, store: LimitStore | None = None) -> web.Application:
    """The proxy as an aiohttp ``Application``, to mount inside another aiohttp app."""
    app = web.Application(client_max_size=config.max_body_bytes)
    proxy = Proxy(config, store)
    app[PROXY] = proxy
    app.router.add_route("*", "/{tail:.*}", proxy.dispatch)

    async def on_startup(_: web.Application) -> None:
        await proxy.start()

    async def on_shutdown(_: web.Application) -> None:
        await proxy.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


PROXY = web.AppKey("proxy", Proxy)


@dataclass
class RunningProxy:
    """A proxy listening on its sockets (tests, the CLI)."""

    proxy: Proxy
    runner: web.ServerRunner
    url: str

    async def close(self) -> None:
        """Graceful: stop accepting, drain (see ``Proxy.stop``), then close connections."""
        for site in list(self.runner.sites):
            await site.stop()
        await self.proxy.stop()
        await self.runner.cleanup()


async def start_proxy(config: Config, host: str | None = None, port: int | None = None,
                      store: LimitStore | None = None) -> RunningProxy:
    """Start listening; ``port=0`` picks a free port (see ``RunningProxy.url``)."""
    proxy = Proxy(config, store)
    await proxy.start()
    runner = web.ServerRunner(create_server(proxy), shutdown_timeout=config.shutdown_grace_s)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host or config.listen_host,
                           config.listen_port if port is None else port, reuse_address=True)
        await site.start()
        if config.admin_listen:
            await web.TCPSite(runner, *config.admin_listen, reuse_address=True).start()
    except BaseException:
        await runner.cleanup()
        await proxy.stop()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    return RunningProxy(proxy, runner, f"http://{bound_host}:{bound_port}")

async def serve_forever(config: Config, host: str | None = None, port: int | None = None,
                        on_ready: Callable[[str], None] | None = None) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully (see ``Proxy.stop``)."""
    running = await start_proxy(config, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready(running.url)
    try:
        await stop.wait()
        log.info("shutting down: draining up to %gs", config.shutdown_grace_s)
    finally:
        await running.close()


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=True)
