"""Redis unreachable: each host enforces its local share (``cap / live hosts``), says so in
``/metrics`` and ``/throttle/status``, and when Redis is back re-registers what it granted
meanwhile so the shared limits resume counting it."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from proxy.limits.redis_status import read_snapshot
from tests.conftest import one_model_config
from tests.redis_server import RedisServer

CAP = 4


async def chat(client: aiohttp.ClientSession, url: str, tokens: int) -> tuple[int, str]:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with client.post(f"{url}/v1/chat/completions", json=body,
                           headers={"x-mock-fault": f"tokens:{tokens}"}) as response:
        return response.status, await response.text()


async def degraded_flag(client: aiohttp.ClientSession, url: str) -> tuple[bool, bool]:
    """(metric says degraded, status says degraded)."""
    async with client.get(f"{url}/metrics") as response:
        metric = "llm_throttle_store_degraded 1.0" in await response.text()
    async with client.get(f"{url}/throttle/status") as response:
        status = (await response.json())["degraded"]
    return metric, status


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition never met"
        await asyncio.sleep(0.05)


def config(mock_url: str, store: str, **redis: Any) -> dict[str, Any]:
    return {**one_model_config(mock_url, max_in_flight=CAP), "store": store,
            "redis": {"heartbeat_s": 0.1, "lease_ttl_s": 1.0, **redis}}


async def test_local_split_while_down_then_shared_again(
        redis_server: RedisServer, redis_store_url: str, mock_llm: Any, make_proxy: Any):
    mock = await mock_llm(batch_size=CAP, ttft_s=0.01, tpot_s=0.02)
    split = config(mock.url, redis_store_url, on_store_error_concurrency="local_split")
    a = await make_proxy(split)
    b = await make_proxy(split)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        await until(lambda: _hosts(redis_store_url, 2))
        await asyncio.sleep(0.3)  # a heartbeat or two: each host has seen the other
        redis_server.kill()
        await until(lambda: _both(degraded_flag(client, a.url)))

        # cap 4 over 2 live hosts: host a admits 2 at a time on its own
        results = await asyncio.gather(*(chat(client, a.url, 10) for _ in range(8)))
        assert all(status == 200 for status, _ in results)
        assert mock.state.peak <= CAP // 2

        long = [asyncio.create_task(chat(client, a.url, 150)) for _ in range(2)]
        await mock.state.wait_until(lambda s: s.in_flight == 2)
        redis_server.start()  # empty: the local leases must be put back
        await until(lambda: _none(degraded_flag(client, a.url)))
        await until(lambda: _none(degraded_flag(client, b.url)))
        snapshot, _ = await read_snapshot(redis_store_url)
        assert snapshot.resources["model:m"].in_flight == 2  # re-registered
        assert not snapshot.degraded

        mock.state.reset()
        burst = await asyncio.gather(*(chat(client, b.url, 5) for _ in range(6)))
        assert all(status == 200 for status, _ in burst)
        assert mock.state.peak <= CAP  # shared again: b only had the 2 slots a left
        await asyncio.gather(*long)


async def test_closed_policy_refuses_with_an_openai_shaped_503(
        redis_server: RedisServer, redis_store_url: str, mock_llm: Any, make_proxy: Any):
    mock = await mock_llm()
    proxy = await make_proxy(config(mock.url, redis_store_url,
                                    on_store_error_concurrency="closed"))
    async with aiohttp.ClientSession() as client:
        redis_server.kill()
        await until(lambda: _both(degraded_flag(client, proxy.url)))
        status, body = await chat(client, proxy.url, 2)
        assert status == 503
        assert '"code": "store_unavailable"' in body
        redis_server.start()
        await until(lambda: _none(degraded_flag(client, proxy.url)))
        assert (await chat(client, proxy.url, 2))[0] == 200


async def test_open_policy_admits_without_a_cap(
        redis_server: RedisServer, redis_store_url: str, mock_llm: Any, make_proxy: Any):
    mock = await mock_llm(batch_size=CAP, ttft_s=0.01, tpot_s=0.02)
    proxy = await make_proxy(config(mock.url, redis_store_url,
                                    on_store_error_concurrency="open"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        redis_server.kill()
        await until(lambda: _both(degraded_flag(client, proxy.url)))
        results = await asyncio.gather(*(chat(client, proxy.url, 10) for _ in range(8)))
        assert all(status == 200 for status, _ in results)
        assert mock.state.peak > CAP
        redis_server.start()
        await until(lambda: _none(degraded_flag(client, proxy.url)))


async def _hosts(url: str, n: int) -> bool:
    snapshot, _ = await read_snapshot(url)
    return snapshot.hosts == n


async def _both(flags: Any) -> bool:
    return all(await flags)


async def _none(flags: Any) -> bool:
    return not any(await flags)


async def test_local_share_across_hosts_never_exceeds_the_cap(
        redis_server: RedisServer, redis_store_url: str, mock_llm: Any, make_proxy: Any):
    """Hazard: with ``local_share`` a host that held nothing when Redis froze admitted
    ``cap // hosts`` on its own while another host already held the whole cap through Redis:
    the chaos soak saw 8 in flight with cap 6 on 3 hosts. Now a host admits only into the
    permits Redis still counts for it, so the cap holds during the fault and after it heals."""
    mock = await mock_llm(batch_size=64, ttft_s=0.01, tpot_s=0.02)
    cfg = {**config(mock.url, redis_store_url, lease_ttl_s=10.0), "queue": {"max_wait_s": 1.0}}
    a, b, c = [await make_proxy(cfg) for _ in range(3)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        await until(lambda: _hosts(redis_store_url, 3))
        await asyncio.sleep(0.3)
        held = [asyncio.create_task(chat(client, a.url, 250)) for _ in range(CAP)]
        await mock.state.wait_until(lambda s: s.in_flight == CAP)
        redis_server.pause()  # frozen: every host times out and degrades
        try:
            for proxy in (a, b, c):
                await until(lambda p=proxy: _both(degraded_flag(client, p.url)))
            others = await asyncio.gather(*(chat(client, u, 2) for u in (b.url, c.url)
                                            for _ in range(3)))
            assert mock.state.peak <= CAP, f"upstream saw {mock.state.peak}, cap {CAP}"
            assert all(status == 429 for status, _ in others), [s for s, _ in others]
            # a reuses its own permits as its long requests end
            assert mock.state.in_flight == CAP  # a's long requests still running
            await asyncio.gather(*held)
            more = [asyncio.create_task(chat(client, a.url, 5)) for _ in range(CAP)]
            statuses = [status for status, _ in await asyncio.gather(*more)]
            assert statuses == [200] * CAP, statuses
        finally:
            redis_server.resume()
        for proxy in (a, b, c):
            await until(lambda p=proxy: _none(degraded_flag(client, p.url)))
        burst = await asyncio.gather(*(chat(client, u, 5) for u in (a.url, b.url, c.url)
                                       for _ in range(4)))
        assert all(status == 200 for status, _ in burst)
        assert mock.state.peak <= CAP, f"upstream saw {mock.state.peak}, cap {CAP}"


def test_local_share_caps_are_exactly_the_permits_held():
    """Hazard: a local cap above what the host holds per resource (a prefix-capped client,
    a second model) lets a degraded host admit into permits Redis counts for another host."""
    from proxy.limits.base import Grant, LimitSpec, Option
    from proxy.limits.redis_local import share_spec

    spec = LimitSpec(caps={"model:m": 6, "model:n": 6, "upstream:up": None},
                     prefix_caps={"attr:": 2})
    held = [Grant(f"r{i}", Option("up", ()), ("model:m", "upstream:up", "attr:x"), (), 0.0)
            for i in range(2)]
    local = share_spec(spec, 3, "local_share", "open", held)
    assert [local.cap_of(r) for r in ("model:m", "model:n", "upstream:up", "attr:x", "attr:y")
            ] == [2, 0, None, 2, 0]
    split = share_spec(spec, 3, "local_split", "open", held)
    assert [split.cap_of(r) for r in ("model:m", "attr:y")] == [2, 1]
