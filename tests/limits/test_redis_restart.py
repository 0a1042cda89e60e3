"""Redis restarts under load (``SHUTDOWN NOSAVE``, same port, every key gone) while two
proxies stream at the cap, then a burst of new requests arrives.

With the recovery pause the mock never sees more than the cap: hosts put their live leases
back before anyone admits. Without it (``recovery_pause_s=0``) the same run overshoots, which
is what shows the pause is doing the work.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from proxy.admission import build_limit_spec
from proxy.config import parse_config
from proxy.limits.redis import RedisStore
from proxy.limits.redis_status import read_snapshot
from tests.conftest import one_model_config
from tests.redis_server import RedisServer

CAP = 4


async def chat(client: aiohttp.ClientSession, url: str, tokens: int) -> tuple[int, str]:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-mock-fault": f"tokens:{tokens}"}
    async with client.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
        return r.status, await r.text()


def well_formed(status: int, body: str) -> bool:
    """A finished stream, or an OpenAI-shaped error (as JSON, or as an SSE error event)."""
    if status == 200:
        if body.rstrip().endswith("data: [DONE]"):
            return True
        last = body.strip().rsplit("data: ", 1)[-1]
        return "error" in json.loads(last)
    error = json.loads(body)["error"]
    return {"message", "type", "code"} <= set(error)


@pytest.mark.parametrize("pause_s", [0.5, 0.0], ids=["with_pause", "without_pause"])
async def test_restart_under_load(pause_s: float, redis_server: RedisServer,
                                  redis_store_url: str, mock_llm: Any, make_proxy: Any):
    mock = await mock_llm(batch_size=CAP, ttft_s=0.01, tpot_s=0.02)
    data = {
        **one_model_config(mock.url, max_in_flight=CAP),
        "store": redis_store_url,
        # closed: a moment of unreachability refuses instead of admitting locally, so only
        # the restart itself (and the pause) decides what reaches the mock
        "redis": {"heartbeat_s": 0.2, "lease_ttl_s": 1.0,
                  "on_store_error_concurrency": "closed"},
    }
    config = parse_config(data, environ={})
    proxies = [
        await make_proxy(data, store=RedisStore(build_limit_spec(config), redis_store_url,
                                                config.redis, recovery_pause_s=pause_s))
        for _ in range(2)
    ]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        # The host holding the long streams gets no new traffic: it learns of the data loss
        # only at its next heartbeat, while the other host takes the burst at once.
        old = [asyncio.create_task(chat(client, proxies[0].url, 80)) for _ in range(CAP)]
        await mock.state.wait_until(lambda s: s.in_flight == CAP, timeout=5)
        mock.state.reset()  # peaks from here on

        await asyncio.to_thread(redis_server.restart)
        burst = [asyncio.create_task(chat(client, proxies[1].url, 4)) for _ in range(12)]
        if pause_s:
            await asyncio.sleep(0.35)  # inside the pause: the old leases are back, no new ones
            snapshot, _ = await read_snapshot(redis_store_url)
            assert snapshot.resources["model:m"].in_flight == CAP
        results = await asyncio.wait_for(asyncio.gather(*old, *burst), 30)  # nothing hangs

    peak = mock.state.peak
    print(f"\nrecovery pause {pause_s} s: mock peak {peak} (cap {CAP}); statuses "
          f"{sorted(status for status, _ in results)}")
    assert all(well_formed(status, body) for status, body in results)
    if pause_s:
        assert peak <= CAP
        assert sum(status == 200 for status, _ in results) >= 12
    else:
        assert peak > CAP  # the pause is what keeps the cap
