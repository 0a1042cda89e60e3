"""Attribution values are bounded in metrics and status; per-value limits still hold."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from proxy.attribution import AttributionLabels
from proxy.auth import Identity
from proxy.limits.base import Priority
from proxy.metrics import ProxyMetrics
from proxy.record import RequestRecord
from tests.raw_upstream import RawUpstream, Reply, Seen, replies

CHAT = json.dumps({"model": "m", "messages": [], "max_tokens": 1}).encode()
ANSWER = Reply.json({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})


def attributed_config(url: str, **attribution: object) -> dict[str, object]:
    return {"upstreams": {"up": {"url": url}}, "models": {"m": {"upstreams": ["up"]}},
            "attribution": {"header": "x-profile", "max_in_flight": 1, **attribution}}


async def send(session: aiohttp.ClientSession, url: str, value: str) -> int:
    async with session.post(url + "/v1/chat/completions", data=CHAT,
                            headers={"x-profile": value,
                                     "Content-Type": "application/json"}) as response:
        await response.read()
        return response.status


async def test_ten_thousand_values_do_not_grow_metrics_or_status(make_proxy, store_kind):
    """Hazard: every distinct attribution header value became its own metric series and
    status entry, for good: 10,000 values grew /metrics from 6 KB to 3.8 MB and the status
    document to 960 KB. Now at most ``max_values`` are shown, the rest as ``<client>/other``."""
    async with RawUpstream(replies(lambda seen: ANSWER)) as upstream:
        proxy = await make_proxy(attributed_config(upstream.url, max_values=20))
        connector = aiohttp.TCPConnector(limit=16)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(proxy.url + "/metrics") as response:
                idle_size = len(await response.read())
            values = iter(range(10_000))

            async def worker() -> list[int]:
                return [await send(session, proxy.url, f"v{i}") for i in values]

            statuses = [s for part in await asyncio.gather(*[worker() for _ in range(16)])
                        for s in part]
            assert statuses == [200] * 10_000
            async with session.get(proxy.url + "/metrics") as response:
                metrics = (await response.read()).decode()
            async with session.get(proxy.url + "/throttle/status") as response:
                status = await response.json()
        assert len(proxy.proxy.attribution) == 20
        assert 'client="anonymous/other"' in metrics
        clients = {line.split('client="')[1].split('"')[0] for line in metrics.splitlines()
                   if 'client="' in line}
        assert len(clients - {"-"}) <= 21  # "-": the admin requests themselves
        assert len(metrics) < idle_size + 64 * 1024, len(metrics)
        assert len(status["attributed"]) <= 21
        assert len(json.dumps(status)) < 16 * 1024
        # the store forgot the idle per-value resources too (nothing in flight now)
        snapshot = await proxy.proxy.store.snapshot()
        assert sum(name.startswith("attr:") for name in snapshot.resources) <= 21


async def test_per_value_limits_hold_for_folded_values(make_proxy, store_kind):
    """Folding is for display only: a value shown as ``other`` keeps its own cap of 1."""
    def slow(seen: Seen) -> Reply:
        return Reply.json({"choices": []}, hold_s=0.2)

    async with RawUpstream(replies(slow)) as upstream:
        proxy = await make_proxy(attributed_config(upstream.url, max_values=2))
        async with aiohttp.ClientSession() as session:
            assert await send(session, proxy.url, "a") == 200
            assert await send(session, proxy.url, "b") == 200
            upstream.peak = 0
            statuses = await asyncio.gather(*[send(session, proxy.url, "c") for _ in range(3)])
        assert statuses == [200] * 3
        assert upstream.peak == 1
        requests = proxy.proxy.metrics.requests.children
        assert {client for (_, client, _) in requests} == {"anonymous/a", "anonymous/b",
                                                            "anonymous/other"}


def test_idle_values_expire_and_lose_their_series():
    """An idle value gives its place (and its metric series) up after ``value_idle_s``."""
    now = [0.0]
    labels = AttributionLabels(max_values=2, idle_s=10, clock=lambda: now[0])
    metrics = ProxyMetrics()

    def seen(value: str) -> str:
        label = labels.label(Identity("c", Priority.BATCH, (), (), value))
        record = RequestRecord(0.0, "POST", "/v1/chat/completions", client=label, model="m",
                               status=200, priority=Priority.BATCH, queue_s=0.0,
                               tokens=(1, 1))
        metrics.observe(record)
        return label

    assert seen("a") == "c/a" and seen("b") == "c/b"
    assert seen("x") == "c/other"  # full, nobody idle
    now[0] = 5
    assert seen("a") == "c/a"  # refreshed
    now[0] = 12
    assert seen("y") == "c/y"  # b idle past 10 s: y takes its place
    now[0] = 30
    gone = labels.expire()
    assert sorted(gone) == ["c/a", "c/y"] and len(labels) == 0
    metrics.forget_clients(gone)
    clients = {key[1] for key in metrics.requests.children}
    assert clients == {"c/b", "c/other"}  # b was dropped from tracking, not yet its series
    assert labels.label(Identity("c", Priority.BATCH, (), ())) == "c"  # no attribute


async def test_a_folded_value_that_goes_idle_leaves_metrics_scrapable(make_proxy):
    """The ``<client>/other`` resource exists only while a folded value is in flight: once it
    is gone its gauges are removed (by their ``kind``/``name`` labels), and /metrics still
    answers 200 without it. ``max_values: 0`` folds every value (it once raised
    StopIteration inside the request path: a 500)."""
    def slow(seen: Seen) -> Reply:
        return Reply.json({"choices": []}, hold_s=0.4)

    async with RawUpstream(replies(slow)) as upstream:
        proxy = await make_proxy(attributed_config(upstream.url, max_values=0))
        async with aiohttp.ClientSession() as session:
            running = asyncio.create_task(send(session, proxy.url, "a"))
            for _ in range(200):
                if upstream.seen:
                    break
                await asyncio.sleep(0.01)
            async with session.get(proxy.url + "/metrics") as response:
                assert response.status == 200
                during = await response.text()
            assert await running == 200
            await proxy.proxy.store.drain()
            async with session.get(proxy.url + "/metrics") as response:
                assert response.status == 200
                after = await response.text()
    assert 'name="anonymous/other"' in during
    assert 'name="anonymous/other"' not in after
