"""Sentinel failover: ``redis+sentinel://`` follows the master redis-py's Sentinel names. A
master killed under load is replaced by its replica; the store degrades meanwhile, then
re-registers what it holds on the new master (the data-loss path), and the cap and the
permits hold throughout."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.limits.redis import mark_fresh
from tests.limits.faults import CAP, assert_promises, fault_config, run_load, status_of, until
from tests.redis_server import RedisServer, free_port, master_and_replica, redis_server_binary

SERVICE = "llmt"


@pytest.fixture
def sentinel_setup() -> Iterator[tuple[RedisServer, RedisServer, RedisServer]]:
    if redis_server_binary() is None:
        pytest.skip("redis-server not found")
    master, replica = master_and_replica()
    port = free_port()
    sentinel = RedisServer(port=port)
    conf = sentinel.dir / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {sentinel.dir}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {SERVICE} 400\n"
        f"sentinel failover-timeout {SERVICE} 3000\n")
    sentinel.binary_args = [str(conf), "--sentinel"]
    sentinel.start_sentinel()
    try:
        yield master, replica, sentinel
    finally:
        for server in (sentinel, replica, master):
            server.stop()


def _role(server: RedisServer) -> bytes:
    return server.command("ROLE")


async def test_failover_under_load_keeps_cap_and_permits(
        sentinel_setup: tuple[RedisServer, RedisServer, RedisServer], mock_llm: Any,
        make_proxy: Any, caplog: pytest.LogCaptureFixture):
    """Hazard: no Sentinel support, and a failover's -READONLY answered clients with 500."""
    caplog.set_level(logging.WARNING)
    master, replica, sentinel = sentinel_setup
    mark_fresh(master.url)
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}/0"
    mock = await mock_llm(batch_size=64, ttft_s=0.01, tpot_s=0.02)
    proxy = await make_proxy(fault_config(mock.url, url))
    stop = asyncio.Event()
    load = asyncio.create_task(run_load([proxy.url], 12, stop))
    await asyncio.sleep(1.0)
    master.kill()
    await until(lambda: _promoted(replica), timeout=30)
    await until(lambda: _healthy(proxy.url), timeout=20)
    await asyncio.sleep(1.5)  # shared limits on the new master, under load
    stop.set()
    result = await load
    assert_promises(result, mock.state.peak, CAP, caplog.records)
    assert any("lost its data" in r.getMessage() or "unavailable" in r.getMessage()
               for r in caplog.records)


async def _promoted(replica: RedisServer) -> bool:
    return _role(replica).startswith(b"*3\r\n$6\r\nmaster")


async def _healthy(url: str) -> bool:
    return not (await status_of(url))["degraded"]
