"""Faults as an operator meets them, under load, through a relay the test controls: each one
must keep the store's promises (``faults.assert_promises``): the upstream never above the cap,
no request past its bound (max wait + ``command_timeout_s``), no 500, no traceback, and zero
permits held once healed and drained (the ``make_proxy`` teardown)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from loadtest.redis_relay import RedisRelay
from tests.limits.faults import (
    CAP,
    assert_promises,
    fault_config,
    healthz,
    run_load,
    status_of,
    until,
)
from tests.redis_server import RedisServer, free_port

Action = Callable[[RedisServer, RedisRelay], None]


@pytest.fixture
async def relay(redis_server: RedisServer, redis_store_url: str) -> AsyncIterator[RedisRelay]:
    relay = RedisRelay(redis_server.port)
    await relay.start()
    yield relay
    await relay.close()
    redis_server.resume()
    redis_server.command("CONFIG", "SET", "maxmemory", "0")
    redis_server.command("REPLICAOF", "NO", "ONE")


def _oom(server: RedisServer, _: RedisRelay) -> None:
    server.command("CONFIG", "SET", "maxmemory", "1")


def _oom_end(server: RedisServer, _: RedisRelay) -> None:
    server.command("CONFIG", "SET", "maxmemory", "0")


def _readonly(server: RedisServer, _: RedisRelay) -> None:
    server.command("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that never answers


def _readonly_end(server: RedisServer, _: RedisRelay) -> None:
    server.command("REPLICAOF", "NO", "ONE")


def _client_kill(server: RedisServer, _: RedisRelay) -> None:
    server.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")


#: fault -> (begin, end, degraded reason it must show, or None when it need not degrade)
FAULTS: dict[str, tuple[Action, Action, str | None]] = {
    "oom": (_oom, _oom_end, "oom"),
    "readonly": (_readonly, _readonly_end, "readonly"),
    "black_hole": (lambda s, r: r.black_hole(), lambda s, r: r.heal(), "timeout"),
    "sigstop": (lambda s, r: s.pause(), lambda s, r: s.resume(), "timeout"),
    "kill9_empty_restart": (lambda s, r: s.kill(), lambda s, r: s.start(), "unreachable"),
    "reset": (lambda s, r: r.reset(), lambda s, r: None, None),
    "client_kill": (_client_kill, lambda s, r: None, None),
    "latency": (lambda s, r: setattr(r, "latency_s", 0.15),
                lambda s, r: setattr(r, "latency_s", 0.0), None),
}


async def _degraded(url: str) -> bool:
    return bool((await status_of(url))["degraded"])


async def _healthy(url: str) -> bool:
    return not await _degraded(url)


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_fault_under_load_keeps_the_promises(
        fault: str, redis_server: RedisServer, relay: RedisRelay, mock_llm: Any,
        make_proxy: Any, caplog: pytest.LogCaptureFixture):
    """Hazards: error replies (-OOM, -READONLY) leaking permits for good and answering 500; a
    black hole or a frozen Redis hanging requests past max wait, then doubling the cap when
    calls held on the wire land after the host admitted on its local share."""
    caplog.set_level(logging.WARNING)
    begin, end, reason = FAULTS[fault]
    mock = await mock_llm(batch_size=64, ttft_s=0.01, tpot_s=0.02)
    proxy = await make_proxy(fault_config(mock.url, relay.url()))
    stop = asyncio.Event()
    load = asyncio.create_task(run_load([proxy.url], 12, stop))
    await asyncio.sleep(0.5)
    begin(redis_server, relay)
    if reason is not None:
        await until(lambda: _degraded(proxy.url))
        assert (await status_of(proxy.url))["degraded_reason"] == reason
        health = await healthz(proxy.url)
        assert health["status"] == "degraded" and health["reason"] == reason
    repeat = fault in ("reset", "client_kill")
    for _ in range(6):
        await asyncio.sleep(0.25)
        if repeat:
            begin(redis_server, relay)
    end(redis_server, relay)
    await until(lambda: _healthy(proxy.url))
    await asyncio.sleep(1.0)  # shared limits again, under load
    stop.set()
    result = await load
    assert_promises(result, mock.state.peak, CAP, caplog.records)
    assert (await healthz(proxy.url))["status"] == "ok"
    if reason is not None:  # one line per change of state, not one per request
        lines = [r for r in caplog.records if r.name == "llm_throttle.redis"]
        assert len(lines) <= 4, [r.getMessage() for r in lines]


async def test_healing_a_black_hole_never_exceeds_the_cap(
        redis_server: RedisServer, relay: RedisRelay, mock_llm: Any, make_proxy: Any,
        caplog: pytest.LogCaptureFixture):
    """Hazard: calls held on the wire during a black hole land when it heals and Redis grants
    them, while the requests the host admitted on its local share are still running and not
    yet registered: the upstream saw 8 in flight with cap 4 on one host."""
    caplog.set_level(logging.WARNING)
    # requests outlast the 0.5 s it takes to degrade: the host still holds them then
    mock = await mock_llm(batch_size=64, ttft_s=0.01, tpot_s=0.3)
    proxy = await make_proxy(fault_config(mock.url, relay.url(), lease_ttl_s=5.0))
    stop = asyncio.Event()
    load = asyncio.create_task(run_load([proxy.url], 16, stop))
    await asyncio.wait_for(mock.state.wait_until(lambda s: s.in_flight >= CAP), 10)
    relay.black_hole()  # local_share reuses the leases the host holds: they last 5 s
    await until(lambda: _degraded(proxy.url), timeout=20)
    await asyncio.wait_for(mock.state.wait_until(lambda s: s.in_flight >= 1), 10)
    await asyncio.sleep(1.5)  # the local share in use (reused), the held calls on the wire
    relay.heal()
    await until(lambda: _healthy(proxy.url))
    await asyncio.sleep(1.0)
    stop.set()
    result = await load
    assert mock.state.peak <= CAP, f"upstream saw {mock.state.peak} in flight, cap {CAP}"
    assert result.served > 0 and not tracebacks_or_5xx(result, caplog.records)


def tracebacks_or_5xx(result: Any, records: Any) -> list[str]:
    from tests.limits.faults import tracebacks

    return tracebacks(records) + result.server_errors
