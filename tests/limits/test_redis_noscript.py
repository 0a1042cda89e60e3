"""Redis forgets the scripts (``SCRIPT FLUSH``; a restart or failover does the same) while
requests are queued and more arrive: every request still succeeds, and each forgotten script
is loaded again once per host, not once per call that found it missing."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest

from proxy.limits.redis_scripts import SCRIPT_NAMES
from tests.conftest import one_model_config
from tests.redis_server import RedisServer

CAP = 2


def script_loads(server: RedisServer) -> int:
    info = server.command("INFO", "commandstats").decode()
    found = re.search(r"cmdstat_script\|load:calls=(\d+)", info)
    return int(found.group(1)) if found else 0


async def stream(session: aiohttp.ClientSession, url: str, task: int = 0) -> tuple[int, str]:
    body = {"model": "m", "stream": True, "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}
    async with session.post(f"{url}/v1/chat/completions", json=body,
                            headers={"x-task": f"t{task % 5}"}) as r:
        return r.status, await r.text()


@pytest.mark.parametrize("fairness", ["tokens", "attained"])
@pytest.mark.parametrize("forget", ["script_flush", "restart_empty"])
@pytest.mark.parametrize("store_kind", ["redis"], indirect=True)
async def test_forgotten_scripts_under_queued_load_are_reloaded_once_never_surfaced(
        forget: str, fairness: str, store_kind: str, redis_server: RedisServer,
        mock_llm: Any, make_proxy: Any):
    """Hazard: after a restart or failover Redis answers NOSCRIPT to every call in flight.
    Passed on, that is a failed request (or a degraded store); reloaded by each caller, a
    burst of N calls sends N SCRIPT LOADs of the same script (each a full compile on the
    Redis thread, under exactly the load where Redis matters most). In both queue orders,
    ``attained`` with flows by task, whose counters the empty restart forgets."""
    mock = await mock_llm(batch_size=CAP, ttft_s=0.01, tpot_s=0.02)
    config = one_model_config(mock.url, max_in_flight=CAP)
    config["queue"] = {"fairness": fairness}
    config["attribution"] = {"header": "x-task", "max_in_flight": 4}
    proxy = await make_proxy(config)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        first = [asyncio.create_task(stream(session, proxy.url, i)) for i in range(12)]
        for _ in range(500):  # wait until most of them queue behind the cap
            if (await proxy.proxy.store.snapshot()).queue_depth >= 8:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the requests never queued")
        if forget == "script_flush":
            before = script_loads(redis_server)
            assert redis_server.command("SCRIPT", "FLUSH") == b"+OK\r\n"
        else:  # every key and script gone; the hosts re-register what they hold
            redis_server.restart()
            before = 0
        # a burst of admits, all on the wire before any reply: each one meets NOSCRIPT
        burst = [asyncio.create_task(stream(session, proxy.url, i)) for i in range(20)]
        results = await asyncio.gather(*first, *burst)
    loads = script_loads(redis_server) - before
    for status, text in results:
        assert status == 200 and text.rstrip().endswith("data: [DONE]"), text[-300:]
        assert "NOSCRIPT" not in text
    assert 1 <= loads <= len(SCRIPT_NAMES), loads  # at most once per script on this host
    assert not (await proxy.proxy.store.snapshot()).degraded
