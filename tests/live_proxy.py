"""A live proxy for tests that write raw bytes: memory store, model ``m`` capped at 2, client
keys on, small body limit and body timeout, in front of an instrumented mock LLM, on an event
loop the test drives itself (``LiveProxy.run``), with an "evil" listener that must never be
contacted (the host absolute-form targets name).

``tests/test_fuzz.py`` (hypothesis examples share one) and ``tests/test_raw_requests.py`` use it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from hypothesis import event

from loadtest.mock_llm import MOCK_STATE, MockLLMConfig, MockState, create_app
from proxy.config import parse_config
from proxy.runner import RunningProxy, start_proxy
from tests.conftest import assert_nothing_held
from tests.fuzz_requests import ADMIN_KEY, FUZZ_ID, KEY, MAX_BODY
from tests.raw_client import RawResponse

T = TypeVar("T")

BODY_TIMEOUT_S = 0.3


@dataclass
class Listener:
    """A TCP server that counts connections: the host that must never be reached."""

    server: asyncio.Server
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])


class LiveProxy:
    """Proxy + instrumented mock + evil listener on one event loop that the test drives."""

    def __init__(self, runner: asyncio.Runner, proxy: RunningProxy, mock: web.AppRunner,
                 evil: Listener, upstream_status: dict[str, int]):
        self.runner = runner
        self.proxy = proxy
        self.mock = mock
        self.evil = evil
        #: status the mock answered, by fuzz id (500 when its handler raised)
        self.upstream_status = upstream_status
        self.port = int(proxy.url.rsplit(":", 1)[1])
        self.mock_port = int(mock.addresses[0][1])
        self._ids = 0
        #: name -> predicate on the raw request: a proxy 5xx to a matching request is a known,
        #: still open bug (``tests/test_fuzz.py``), recorded as an event instead of failing
        self.known_bugs: dict[str, Callable[[bytes], bool]] = {}

    @property
    def mock_state(self) -> MockState:
        return self.mock.app[MOCK_STATE]

    def next_id(self) -> str:
        self._ids += 1
        return f"f{self._ids}"

    def run(self, coro: Awaitable[T]) -> T:
        return self.runner.run(coro)  # type: ignore[arg-type]

    async def settle(self, timeout: float = 3.0) -> None:
        """Nothing held, nothing active in proxy or mock, the evil host untouched."""
        await assert_nothing_held(self.proxy, timeout)
        deadline = time.monotonic() + timeout
        while self.proxy.proxy.active or self.mock_state.in_flight:
            if time.monotonic() > deadline:
                raise AssertionError(f"still active: proxy {self.proxy.proxy.active}, "
                                     f"mock {self.mock_state.in_flight}")
            await asyncio.sleep(0.01)
        assert self.evil.connections == 0, bytes(self.evil.received[:500])

    def check(self, fuzz_id: str, request: bytes, response: RawResponse | None) -> None:
        """Property 1: an answer, and any 5xx in it passed through from the upstream."""
        shown = request[:600] if len(request) < 2000 else request[:600] + b"..."
        assert response is not None, f"connection closed without a response to {shown!r}"
        upstream = self.upstream_status.get(fuzz_id)
        event(f"status {response.status} {error_code(response.body)}")
        if response.status == 505 and upstream is None and \
                not request.split(b"\r\n", 1)[0].endswith((b" HTTP/1.1", b" HTTP/1.0")):
            return  # the one 5xx the proxy owes: a request line not HTTP/1.0 or 1.1
        if response.status >= 500:
            origin = "upstream" if upstream == response.status else "proxy"
            event(f"5xx from the {origin}")
            if origin == "proxy" and (bug := self._known_bug(request)) is not None:
                event(f"known bug: {bug}")
                return
            assert origin == "upstream", (
                f"the proxy answered {response.status} (upstream answered {upstream}) to "
                f"{shown!r}: {response.body[:300]!r}")


    def _known_bug(self, raw: bytes) -> str | None:
        return next((name for name, matches in self.known_bugs.items() if matches(raw)), None)


def error_code(body: bytes) -> str:
    """The OpenAI error code of a body, or what kind of body it is (for the statistics)."""
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "(no OpenAI error)" if body[:1] != b"{" else "(JSON)"


async def start_live(upstream_status: dict[str, int], config: dict[str, Any]) -> tuple[
        RunningProxy, web.AppRunner, Listener]:
    app = create_app(MockLLMConfig(ttft_s=0, tpot_s=0, output_tokens=4, models=["m"],
                                   batch_size=8))

    @web.middleware
    async def record_status(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                            ) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if (fuzz_id := request.headers.get(FUZZ_ID)) is not None:
                upstream_status[fuzz_id] = status

    app.middlewares.append(record_status)
    mock = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.25)
    await mock.setup()
    await web.TCPSite(mock, "127.0.0.1", 0).start()
    mock_url = f"http://127.0.0.1:{mock.addresses[0][1]}"

    evil: Listener

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        evil.connections += 1
        evil.received += await reader.read(4096)
        writer.close()

    evil = Listener(await asyncio.start_server(on_connect, "127.0.0.1", 0))
    data = {
        "store": "memory",
        "admin_key": ADMIN_KEY,
        "max_body_bytes": MAX_BODY,
        "body_read_timeout_s": BODY_TIMEOUT_S,
        "upstreams": {"up": {"url": mock_url, "read_timeout_s": 5}},
        "models": {"m": {"upstreams": ["up"], "max_in_flight": 2,
                         "tokens_per_minute": 10_000_000}},
        "clients": {"fuzz": {"key": KEY, "max_in_flight": 4}},
        "queue": {"max_depth": 8, "max_wait_s": 2},
        **config,
    }
    proxy = await start_proxy(parse_config(data, environ={}), port=0)
    return proxy, mock, evil


@contextmanager
def live_proxy(config: dict[str, Any] | None = None) -> Iterator[LiveProxy]:
    """A live proxy (``config`` overrides its settings), settled and closed after use."""
    with asyncio.Runner() as runner:
        upstream_status: dict[str, int] = {}
        proxy, mock, evil = runner.run(start_live(upstream_status, config or {}))
        harness = LiveProxy(runner, proxy, mock, evil, upstream_status)
        try:
            yield harness
            runner.run(harness.settle())
        finally:
            runner.run(proxy.close())
            runner.run(mock.cleanup())
            evil.server.close()
