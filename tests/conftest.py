"""Shared fixtures: the mock LLM upstream, proxies on real sockets, and the store matrix.

Every proxy a test starts is checked on the way out: all releases drained, every in-flight
count back at zero and the queue empty. A test that leaks a permit fails here even if its own
assertions passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from loadtest.mock_llm import MockLLM, MockLLMConfig
from proxy.config import parse_config
from proxy.runner import RunningProxy, start_proxy
from tests.redis_server import RedisServer, redis_server_binary

#: stores every admission test runs against (the Redis store adds "redis")
STORES: list[Any] = ["memory"]
if redis_server_binary() is not None:
    STORES.append("redis")
else:
    STORES.append(pytest.param("redis", marks=pytest.mark.skip(
        reason="redis-server not found on PATH (apt-get install redis-server)")))

MockFactory = Callable[..., Awaitable[MockLLM]]
ProxyFactory = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def mock_llm() -> AsyncIterator[MockFactory]:
    """``await mock_llm(batch_size=4, ttft_s=0.01)`` -> a running mock (stopped afterwards)."""
    started: list[MockLLM] = []

    async def make(**config: Any) -> MockLLM:
        server = MockLLM(MockLLMConfig(**config))
        await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Parametrizes a test over every store; tests that ask for it run once per store."""
    return request.param


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One ``redis-server`` for the session, on a free port; tests may kill or restart it."""
    if redis_server_binary() is None:
        pytest.skip("redis-server not found on PATH (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_store_url(redis_server: RedisServer) -> str:
    """The session Redis, running and emptied, declared freshly deployed (no recovery pause)."""
    from proxy.limits.redis import mark_fresh

    redis_server.start()  # a previous test may have stopped it
    redis_server.flushall()
    mark_fresh(redis_server.url)
    return redis_server.url


def _store_setting(request: pytest.FixtureRequest) -> str:
    if "store_kind" not in request.fixturenames:
        return "memory"
    kind = request.getfixturevalue("store_kind")
    if kind == "memory":
        return "memory"
    return request.getfixturevalue("redis_store_url")


async def assert_nothing_held(running: RunningProxy, timeout: float = 3.0) -> None:
    """In flight and queue back at zero (waits briefly for background releases)."""
    store = running.proxy.store
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await store.drain()
        snapshot = await store.snapshot()
        held = {n: s.in_flight for n, s in snapshot.resources.items() if s.in_flight}
        queued = {n: s.queued for n, s in snapshot.resources.items() if s.queued}
        if not held and not queued and snapshot.queue_depth == 0:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"leaked: in flight {held}, queued {queued}, depth {snapshot.queue_depth}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def make_proxy(request: pytest.FixtureRequest) -> AsyncIterator[ProxyFactory]:
    """``await make_proxy({...config...})`` -> a proxy on a free port, leak-checked on exit."""
    started: list[RunningProxy] = []
    store = _store_setting(request)

    async def make(config: dict[str, Any], **overrides: Any) -> RunningProxy:
        data = {"store": store, **config}
        running = await start_proxy(parse_config(data, environ={}), port=0, **overrides)
        started.append(running)
        return running

    yield make
    try:
        for running in started:
            await assert_nothing_held(running)
    finally:
        for running in started:
            await running.close()


def one_model_config(upstream_url: str, **model: Any) -> dict[str, Any]:
    """A config with one upstream and one model 'm' (keyword args go to the model)."""
    return {
        "upstreams": {"up": {"url": upstream_url}},
        "models": {"m": {"upstreams": ["up"], **model}},
    }


@pytest.fixture
async def make_store(request: pytest.FixtureRequest, store_kind: str) -> AsyncIterator[
        Callable[..., Awaitable[Any]]]:
    """``await make_store(spec)`` -> a started store of the parametrized kind, closed after."""
    from proxy.limits.base import LimitStore

    started: list[LimitStore] = []

    async def make(spec: Any, **kwargs: Any) -> LimitStore:
        if store_kind == "memory":
            from proxy.limits.memory import MemoryStore

            store: LimitStore = MemoryStore(spec, **kwargs)
        else:
            from proxy.config import RedisConfig
            from proxy.limits.redis import RedisStore

            url = request.getfixturevalue("redis_store_url")
            store = RedisStore(spec, url, kwargs.pop("redis_config", RedisConfig()), **kwargs)
        await store.start()
        started.append(store)
        return store

    yield make
    for store in started:
        await store.close()


@pytest.fixture
async def openai_client() -> AsyncIterator[Callable[..., Any]]:
    """``openai_client(origin, key=..., **kwargs)`` -> AsyncOpenAI on origin + /v1, closed after."""
    from openai import AsyncOpenAI

    made: list[AsyncOpenAI] = []

    def make(origin: str, key: str = "client-key", **kwargs: Any) -> AsyncOpenAI:
        kwargs.setdefault("max_retries", 0)
        client = AsyncOpenAI(base_url=origin + "/v1", api_key=key, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await raw_upstream(script)`` -> a started ``tests.raw_upstream.RawUpstream`` (an
    upstream writing exact bytes), closed after the test."""
    from tests.raw_upstream import RawUpstream

    started: list[RawUpstream] = []

    async def make(script: Any, **kwargs: Any) -> RawUpstream:
        upstream = await RawUpstream(script, **kwargs).start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        await upstream.close()
