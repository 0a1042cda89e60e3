"""Load and checks shared by the Redis fault-injection tests.

Every fault test runs clients in a loop against proxies whose store goes through a
``RedisRelay``, injects a fault, heals it, drains, and then checks the four promises: the
upstream (the mock LLM records its peak in flight) never saw more than the bound, no request
waited past its bound, no 5xx other than the policy's 503, no traceback in the log; the
``make_proxy`` fixture then checks zero permits are held.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.conftest import one_model_config

CAP = 4
MAX_WAIT_S = 2.0
COMMAND_TIMEOUT_S = 0.5
#: each request holds its permit about this long at the mock (ttft + tokens x tpot)
SERVICE_S = 0.01 + 4 * 0.02
#: scheduling noise on a loaded 2-core machine
SLACK_S = 1.5
#: the longest a request may take: its queue bound, one call's deadline, its service time
REQUEST_BOUND_S = MAX_WAIT_S + COMMAND_TIMEOUT_S + SERVICE_S + SLACK_S


def fault_config(mock_url: str, store_url: str, **redis: Any) -> dict[str, Any]:
    return {**one_model_config(mock_url, max_in_flight=CAP), "store": store_url,
            "queue": {"max_wait_s": MAX_WAIT_S},
            "redis": {"heartbeat_s": 0.1, "lease_ttl_s": 1.0,
                      "command_timeout_s": COMMAND_TIMEOUT_S, **redis}}


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    slowest_s: float = 0.0
    #: bodies of answers with a status >= 500 (the first few)
    server_errors: list[str] = field(default_factory=list)

    @property
    def served(self) -> int:
        return self.statuses[200]


async def chat(client: aiohttp.ClientSession, url: str, tokens: int = 4) -> tuple[int, str]:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with client.post(f"{url}/v1/chat/completions", json=body,
                           headers={"x-mock-fault": f"tokens:{tokens}"}) as response:
        return response.status, await response.text()


async def run_load(urls: Sequence[str], clients: int, stop: asyncio.Event,
                   max_requests: int = 20000) -> LoadResult:
    """``clients`` loops, spread over ``urls``, until ``stop`` (bounded in count too)."""
    result = LoadResult()
    sent = 0
    timeout = aiohttp.ClientTimeout(total=REQUEST_BOUND_S + 10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as session:
        async def loop(url: str) -> None:
            nonlocal sent
            while not stop.is_set() and sent < max_requests:
                sent += 1
                started = time.monotonic()
                try:
                    status, text = await chat(session, url)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, text = 599, repr(exc)
                result.slowest_s = max(result.slowest_s, time.monotonic() - started)
                result.statuses[status] += 1
                if status >= 500 and len(result.server_errors) < 5:
                    result.server_errors.append(f"{status} {text[:300]}")
                if status != 200:
                    await asyncio.sleep(0.05)  # a refused client backs off a little

        await asyncio.gather(*(loop(urls[i % len(urls)]) for i in range(clients)))
    return result


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition never met"
        await asyncio.sleep(0.05)


async def status_of(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            f"{url}/throttle/status") as response:
        return await response.json()


async def healthz(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as response:
        return await response.json()


def tracebacks(records: Sequence[logging.LogRecord]) -> list[str]:
    """Log records that carry a traceback (none may, under any fault)."""
    return [r.getMessage() for r in records if r.exc_info or "Traceback" in r.getMessage()]


def assert_promises(result: LoadResult, peak: int, bound: int,
                    records: Sequence[logging.LogRecord], allowed_5xx: tuple[int, ...] = ()
                    ) -> None:
    assert result.served > 0, result.statuses
    assert peak <= bound, f"upstream saw {peak} in flight, bound {bound}"
    bad = {s: n for s, n in result.statuses.items() if s >= 500 and s not in allowed_5xx}
    assert not bad, (bad, result.server_errors)
    assert result.slowest_s <= REQUEST_BOUND_S, (
        f"a request took {result.slowest_s:.2f}s, bound {REQUEST_BOUND_S:.2f}s")
    assert not tracebacks(records), tracebacks(records)
