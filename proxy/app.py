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
import json
import logging
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from .admission import AdmissionPolicy, settlement
from .auth import Authenticator, Identity
from .config import Config, UpstreamConfig
from .auth import bearer_token
from .errors import (
    AuthenticationFailed,
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

    def _arrived_on_admin_port(self, request: web.Request) -> bool:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        admin = self.config.admin_listen
        return bool(admin and sockname and sockname[1] == admin[1])

    def check_admin(self, request: web.Request) -> None:
        """Admin routes: only on the admin listener when one is set, and behind the admin key."""
        if self.config.admin_listen and not self._arrived_on_admin_port(request):
            raise NotFound(f"no route for {request.path}")
        if self.config.admin_key:
            token = bearer_token(request.headers) or ""
            if not hmac.compare_digest(token.encode(), self.config.admin_key.encode()):
                raise AuthenticationFailed("admin key required for this route")

    async def handle_status(self, request: web.Request) -> web.Response:
        self.check_admin(request)
        doc = await self.status_json()
        if request.query.get("format") == "table":
            return web.Response(text=render_table(doc) + "\n")
        return web.json_response(doc)

    async def handle_metrics(self, request: web.Request | None) -> web.Response:
        if request is not None:
            self.check_admin(request)
        self.metrics.refresh(await self.store.snapshot())
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def handle_healthz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ok", "store": self.store.name})

    # -- the proxied paths -----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
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

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BodyTooLarge(f"request body of {request.content_length} bytes is over the "
                               f"{limit}-byte limit")
        try:
            async with asyncio.timeout(self.config.body_read_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLarge(f"request body is over the {limit}-byte limit") from None
        except TimeoutError:
            raise RequestTimeout(
                f"request body not received within {self.config.body_read_timeout_s:g}s"
            ) from None

    async def _admitted(self, request: web.Request, identity: Identity,
                        target: str) -> web.StreamResponse:
        arrival = self.clock()
        parsed = parse_body(request.path, await self._read_body(request))
        route = self.policy.route(parsed.model)
        model = route.model.name
        request[MODEL_LABEL] = model
        demand, reserved = self.policy.demand(route, identity, parsed, uuid.uuid4().hex)
        try:
            grant = await self.store.acquire(demand)
        except Throttled as exc:
            self.rates.count(self.rates.rejected, model)
            self.metrics.rejections.labels(model, exc.code or "throttled").inc()
            raise
        self.rates.count(self.rates.admitted, model)
        self.metrics.queue_wait.labels(model, demand.priority.name.lower()).observe(
            grant.queued_s)
        upstream = self.config.upstreams[grant.option.name]
        outcome = RelayOutcome()
        try:
            return await self._forward_admitted(request, target, parsed, upstream, outcome,
                                                arrival, model)
        finally:
            used = self._tokens_used(outcome, reserved)
            self.store.release_nowait(grant, settlement(grant, reserved, used))
            if outcome.usage is not None:
                client = identity.label
                self.metrics.tokens.labels(model, client, "prompt").inc(outcome.usage[0])
                self.metrics.tokens.labels(model, client, "completion").inc(outcome.usage[1])

    async def _forward_admitted(
        self, request: web.Request, target: str, parsed: ParsedRequest, upstream: UpstreamConfig,
        outcome: RelayOutcome, arrival: float, model: str,
    ) -> web.StreamResponse:
        headers = upstream_request_headers(request.headers, upstream, identity_encoding=True)
        started = self.clock()
        try:
            upstream_response = await self.forwarder.open(
                upstream, request.method, target, headers, parsed.body)
        except ProxyError as exc:
            self.metrics.upstream_errors.labels(upstream.name, exc.code or "error").inc()
            raise
        async with upstream_response:
            self.metrics.upstream_latency.labels(upstream.name).observe(self.clock() - started)
            if upstream_response.status in (429, 503):
                self.metrics.upstream_errors.labels(
                    upstream.name, str(upstream_response.status)).inc()
            content_type = upstream_response.headers.get("Content-Type", "")
            if parsed.stream and content_type.startswith("text/event-stream"):
                tap = None
                if "Content-Encoding" not in upstream_response.headers:
                    tap = SSEUsageTap(parsed.strip_usage)
                response = await relay_stream(request, upstream_response, outcome, tap,
                                              self.clock)
                if outcome.first_byte_at is not None:
                    self.metrics.ttft.labels(model).observe(outcome.first_byte_at - arrival)
                return response
            return await relay_plain(upstream_response, outcome, usage_from_body)

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

    async def _passthrough(self, request: web.Request, target: str) -> web.StreamResponse:
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


# -- the application ------------------------------------------------------------------------

PROXY = web.AppKey("proxy", Proxy)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every ProxyError becomes an OpenAI-shaped JSON error; nothing else escapes as a 500."""
    proxy = request.app[PROXY]
    try:
        response = await handler(request)
    except ProxyError as exc:
        response = error_response(exc)
    except web.HTTPException as exc:
        if exc.status == 413:
            response = error_response(BodyTooLarge("request body is too large"))
        elif exc.status == 404:
            response = error_response(NotFound(f"no route for {request.path[:200]}"))
        else:
            raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:  # a bug: log it, answer shaped, never a bare traceback page
        log.exception("unhandled error on %s %s", request.method, request.path[:200])
        response = error_response(ProxyError("internal error in llm-throttle"))
    proxy.metrics.requests.labels(
        request.get(MODEL_LABEL, "-"), request.get(CLIENT_LABEL, "-"), str(response.status)
    ).inc()
    return response


def error_response(exc: ProxyError) -> web.Response:
    return web.Response(
        status=exc.status,
        body=exc.to_bytes(),
        content_type="application/json",
        headers=exc.headers(),
    )


def create_app(config: Config, store: LimitStore | None = None) -> web.Application:
    """The proxy as an aiohttp application (start/stop hooked to the app's lifecycle)."""
    app = web.Application(
        middlewares=[error_middleware], client_max_size=config.max_body_bytes,
        handler_args={"max_field_size": 16384, "max_headers": 128},
    )
    proxy = Proxy(config, store)
    app[PROXY] = proxy
    app.router.add_get("/throttle/status", proxy.handle_status)
    app.router.add_get("/metrics", proxy.handle_metrics)
    app.router.add_get("/healthz", proxy.handle_healthz)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)

    async def on_startup(_: web.Application) -> None:
        await proxy.start()

    async def on_shutdown(_: web.Application) -> None:
        await proxy.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


@dataclass
class RunningProxy:
    """A proxy listening on a socket (tests, the CLI)."""

    app: web.Application
    runner: web.AppRunner
    url: str

    @property
    def proxy(self) -> Proxy:
        return self.app[PROXY]

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_proxy(config: Config, host: str | None = None, port: int | None = None,
                      store: LimitStore | None = None) -> RunningProxy:
    """Start listening; ``port=0`` picks a free port (see ``RunningProxy.url``)."""
    app = create_app(config, store)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=config.shutdown_grace_s)
    await runner.setup()
    site = web.TCPSite(runner, host or config.listen_host,
                       config.listen_port if port is None else port, reuse_address=True)
    await site.start()
    if config.admin_listen:
        await web.TCPSite(runner, *config.admin_listen, reuse_address=True).start()
    bound_host, bound_port = runner.addresses[0][:2]
    return RunningProxy(app, runner, f"http://{bound_host}:{bound_port}")


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
