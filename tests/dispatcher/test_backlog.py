"""Reading the proxy's backlog: the status schema, and failures that must not read as zero."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.dispatcher.backlog import (
    BacklogError,
    HttpStatusBacklog,
    ProxyUnreachable,
    RedisStatusBacklog,
    backlog_from_status,
)
from proxy.dispatcher.signals import open_requests, outside_requests

STATUS: dict[str, Any] = {
    "store": "memory",
    "degraded": False,
    "queue": {"depth": 5, "max_depth": 1000, "max_wait_s": 120, "oldest_wait_s": 1.5},
    "models": {
        "qwen": {"in_flight": 4, "cap": 4, "queued": 3, "oldest_wait_s": 1.5, "saturated": True},
        "llama": {"in_flight": 1, "cap": None, "queued": 2, "oldest_wait_s": 0.2,
                  "saturated": False},
    },
    "upstreams": {"vllm-a": {"in_flight": 4, "cap": 4, "queued": 3, "oldest_wait_s": 1.5,
                             "saturated": True}},
    "gpus": {},
    "clients": {},
}


def test_total_queue_depth_without_models() -> None:
    b = backlog_from_status(STATUS)
    assert b.queued == 5 and b.per_model == {} and not b.degraded


def test_sum_over_the_watched_models() -> None:
    assert backlog_from_status(STATUS, ["qwen"]).queued == 3
    b = backlog_from_status(STATUS, ["qwen", "llama"])
    assert b.queued == 5 and b.per_model == {"qwen": 3, "llama": 2}


def test_a_model_the_proxy_does_not_serve_is_reported_missing() -> None:
    """The proxy lists every configured route; a name matching none has an unknown backlog."""
    b = backlog_from_status(STATUS, ["qwen", "mistral"])
    assert b.missing == ("mistral",) and b.routes == {"qwen": "qwen"}


WILDCARD: dict[str, Any] = {
    **STATUS,
    "models": {"*": {"in_flight": 3, "cap": 3, "queued": 5, "oldest_wait_s": 2.0,
                     "saturated": True}},
}


def test_a_model_served_by_the_wildcard_counts_the_wildcard_queue() -> None:
    """Hazard: with the proxy routing through "*", --models stub-model read a backlog of 0
    while 5 requests were queued, which silently turned backpressure off."""
    b = backlog_from_status(WILDCARD, ["stub-model"])
    assert b.queued == 5 and b.missing == () and b.routes == {"stub-model": "*"}
    assert (b.cap, b.in_flight, b.free_capacity) == (3, 3, 0)


def test_two_names_on_one_route_count_its_queue_once() -> None:
    b = backlog_from_status(WILDCARD, ["a", "b"])
    assert b.queued == 5 and b.cap == 3


def test_capacity_sums_the_watched_routes_and_an_uncapped_one_makes_it_unknown() -> None:
    b = backlog_from_status(STATUS, ["qwen"])
    assert (b.cap, b.in_flight, b.free_capacity) == (4, 4, 0)
    b = backlog_from_status(STATUS, ["qwen", "llama"])
    assert b.cap is None and b.in_flight == 5 and b.free_capacity is None


def test_attributed_requests_are_the_workers_open_requests() -> None:
    doc = {**STATUS, "attributed": {
        "workers/t_1": {"in_flight": 1, "cap": 1, "queued": 0},
        "workers/t_2": {"in_flight": 0, "cap": 1, "queued": 1}}}
    b = backlog_from_status(doc, ["qwen"])
    assert (b.attributed_open, b.attributed_in_flight) == (2, 1)
    assert backlog_from_status(STATUS, ["qwen"]).attributed_open is None


def test_an_empty_attributed_table_from_a_listing_proxy_is_zero_not_unknown() -> None:
    """Hazard: with only outside traffic in flight (the bench's burst) the table is empty;
    read as "no attribution" every request counted as the workers'. A proxy that says it
    lists every attributed request makes it 0; one that does not keeps it unknown."""
    doc = {**STATUS, "attributed": {}, "attribution_listed": True}
    b = backlog_from_status(doc, ["qwen"])
    assert (b.attributed_open, b.attributed_in_flight) == (0, 0)
    assert outside_requests(b) == b.in_flight and open_requests(b) == 0
    b = backlog_from_status({**STATUS, "attributed": {}}, ["qwen"])
    assert b.attributed_open is None and outside_requests(b) == 0


def test_the_attributed_values_with_a_request_open_are_named() -> None:
    """The lead-time estimate needs to see which spawned task first reached the proxy."""
    doc = {**STATUS, "attributed": {
        "workers/t_1": {"in_flight": 1, "cap": 1, "queued": 0},
        "workers/t_2": {"in_flight": 0, "cap": 1, "queued": 1},
        "workers/t_3": {"in_flight": 0, "cap": 1, "queued": 0}}}
    assert backlog_from_status(doc, ["qwen"]).attributed_values == {"t_1", "t_2"}


def test_degraded_is_passed_on() -> None:
    doc = {**STATUS, "degraded": True}
    assert backlog_from_status(doc).degraded


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("queue"),
        lambda d: d["queue"].pop("depth"),
        lambda d: d["queue"].update(depth="3"),
        lambda d: d["queue"].update(depth=-1),
        lambda d: d["queue"].update(depth=True),
    ],
)
def test_a_bad_total_is_an_error_not_zero(mutate: Callable[[dict[str, Any]], Any]) -> None:
    doc = copy.deepcopy(STATUS)
    mutate(doc)
    with pytest.raises(BacklogError):
        backlog_from_status(doc)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("models"),
        lambda d: d["models"]["qwen"].pop("queued"),
        lambda d: d["models"].update(qwen=None) or d["models"].update(qwen=[1]),
        lambda d: d["models"]["qwen"].update(queued=None),
    ],
)
def test_a_bad_model_entry_is_an_error_not_zero(
    mutate: Callable[[dict[str, Any]], Any],
) -> None:
    doc = copy.deepcopy(STATUS)
    mutate(doc)
    with pytest.raises(BacklogError):
        backlog_from_status(doc, ["qwen"])


def test_a_pool_without_hosts_is_an_error_not_zero() -> None:
    """An empty Redis pool (wrong URL or prefix) must not read as "the GPUs are idle"."""
    with pytest.raises(BacklogError, match="hosts: 0"):
        backlog_from_status({**STATUS, "hosts": 0})
    assert backlog_from_status({**STATUS, "hosts": 2}).queued == 5


def test_not_an_object() -> None:
    with pytest.raises(BacklogError):
        backlog_from_status([1, 2])


StatusServer = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def status_server() -> Any:
    """``url = await status_server(app)``: the app on a free port; the URL of /throttle/status."""
    servers: list[TestServer] = []

    async def start(app: web.Application) -> str:
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/throttle/status"))

    yield start
    for server in servers:
        await server.close()


def _app(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    app = web.Application()
    app.router.add_get("/throttle/status", handler)
    return app


async def test_http_reads_the_status(status_server: StatusServer) -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response(STATUS)

    url = await status_server(_app(handler))
    source = HttpStatusBacklog(url, ["qwen"], api_key="admin-secret")
    try:
        assert (await source.read()).queued == 3
        assert (await source.read()).queued == 3  # the session is reused
    finally:
        await source.close()
    assert seen == ["Bearer admin-secret"] * 2


@pytest.mark.parametrize(
    "response",
    [
        lambda: web.Response(status=500, text="boom"),
        lambda: web.Response(status=401, text="admin key required"),
        lambda: web.Response(text="<html>not json</html>", content_type="text/html"),
        lambda: web.json_response({"store": "memory"}),
    ],
)
async def test_http_failures_raise(status_server: StatusServer,
                                   response: Callable[[], web.Response]) -> None:
    async def handler(request: web.Request) -> web.Response:
        return response()

    source = HttpStatusBacklog(await status_server(_app(handler)))
    try:
        with pytest.raises(BacklogError):
            await source.read()
    finally:
        await source.close()


async def test_http_timeout_raises(status_server: StatusServer) -> None:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response(STATUS)

    source = HttpStatusBacklog(await status_server(_app(handler)), timeout_s=0.2)
    try:
        with pytest.raises(BacklogError, match="no answer in time"):
            await source.read()
    finally:
        await source.close()


async def test_connection_refused_raises(unused_tcp_port: int) -> None:
    """Hazard: the message carried aiohttp's internals (``ClientConnectorError: Cannot
    connect to host ... ssl:default [Connect call failed ...]``) instead of saying what failed."""
    url = f"http://127.0.0.1:{unused_tcp_port}/throttle/status"
    source = HttpStatusBacklog(url)
    try:
        with pytest.raises(ProxyUnreachable) as caught:
            await source.read()
    finally:
        await source.close()
    assert str(caught.value) == (f"GET {url}: cannot connect (connection refused); is the "
                                 "proxy running there?")


def test_dispatch_against_a_proxy_that_is_down_says_so_in_one_line(
        unused_tcp_port: int, tmp_path: Path) -> None:
    """Hazard: ``llm-throttle dispatch`` against a proxy that is down logged aiohttp's
    exception class and its connector details rather than one plain line."""
    url = f"http://127.0.0.1:{unused_tcp_port}/throttle/status"
    done = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "dispatch", "--once", "--dry-run",
         "--status-url", url, "--hermes-home", str(tmp_path), "--hermes", "/bin/false",
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    start = [line for line in output.splitlines() if "cannot read the proxy at start" in line]
    assert len(start) == 1, output
    assert f"{url}: cannot connect (connection refused)" in start[0]
    for internal in ("ClientConnectorError", "ssl:default", "Connect call failed", "aiohttp",
                     "Traceback"):
        assert internal not in output, output
    assert "hold=yes(proxy_unreachable)" in done.stdout


async def test_redis_source_reads_the_pool_document(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Redis reader is the proxies' own status builder; only the plumbing is ours."""
    redis_status = pytest.importorskip("proxy.limits.redis_status")
    seen: list[tuple[str, str]] = []

    async def read_status_document(url: str, key_prefix: str = "llmthrottle") -> dict[str, Any]:
        seen.append((url, key_prefix))
        return STATUS

    monkeypatch.setattr(redis_status, "read_status_document", read_status_document)
    source = RedisStatusBacklog("redis://h:6379/0", ["qwen"], key_prefix="pool")
    assert (await source.read()).queued == 3
    assert seen == [("redis://h:6379/0", "pool")]


async def test_redis_source_failures_raise(dispatch_redis_url: str) -> None:
    pytest.importorskip("proxy.limits.redis_status")
    # A reachable Redis that no proxy has written to, then no Redis at all.
    for url in (dispatch_redis_url, "redis://127.0.0.1:9/0"):
        with pytest.raises(BacklogError):
            await RedisStatusBacklog(url, timeout_s=2).read()
    with pytest.raises(ProxyUnreachable, match=r"^redis status redis://127\.0\.0\.1:9/0: "
                       "cannot connect to Redis"):
        await RedisStatusBacklog("redis://:secret@127.0.0.1:9/0", timeout_s=2).read()


async def test_a_real_proxy_routing_through_the_wildcard(make_proxy: Any, mock_llm: Any) -> None:
    """End to end against a real proxy whose only route is "*": the queue of a model it serves
    through "*" is counted, and its cap and in-flight come with it."""
    upstream = await mock_llm()
    proxy = await make_proxy({"upstreams": {"up": {"url": upstream.url}},
                              "models": {"*": {"upstreams": ["up"], "max_in_flight": 1}}})
    source = HttpStatusBacklog(proxy.url + "/throttle/status", ["stub-model"])

    async def hanging() -> None:
        body = {"model": "stub-model", "messages": [{"role": "user", "content": "x"}]}
        async with aiohttp.ClientSession() as session, session.post(
                proxy.url + "/v1/chat/completions", json=body,
                headers={"x-mock-fault": "hang"}) as resp:
            await resp.read()

    load = [asyncio.create_task(hanging()) for _ in range(3)]
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            b = await source.read()
            if b.queued == 2 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert (b.queued, b.cap, b.in_flight, b.routes) == (2, 1, 1, {"stub-model": "*"})
    finally:
        for task in load:
            task.cancel()
        await asyncio.gather(*load, return_exceptions=True)
        await source.close()
