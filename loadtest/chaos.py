"""Chaos soak (``python -m loadtest chaos --minutes 20 --out results/chaos``); not run in CI.

Three proxy hosts (in this process, each through its own ``RedisRelay``) share one
``redis-server``; clients loop against all three; every ``--fault-every`` seconds one random
fault starts and lasts a few seconds: OOM, READONLY, black hole (one host or all), SIGSTOP,
kill -9 and empty restart, RST storm, CLIENT KILL, latency. At the end every fault is healed,
the load stops, and the pool drains. Reported: requests served, lost (a 5xx other than the
policy's 503, or no answer), the upstream's peak in flight against the cap, permits still
held after the drain, and seconds degraded per cause (summed over the hosts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from .mock_llm import MockLLM, MockLLMConfig
from .redis_relay import RedisRelay
from .redis_server import RedisServer, free_port

CAP = 6
HOSTS = 3
FAULTS = ("oom", "readonly", "black_hole_all", "black_hole_one", "sigstop", "kill9_restart",
          "reset", "client_kill", "latency")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--fault-every", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--policy", default="local_share",
                        choices=("local_share", "local_split", "closed"),
                        help="redis.on_store_error_concurrency of the three hosts")
    parser.add_argument("--out", type=Path, default=Path("results/chaos"))


def cli_main(args: argparse.Namespace) -> int:
    result = asyncio.run(run_chaos(args.minutes, args.fault_every, args.clients, args.seed,
                                   args.policy))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chaos.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if result["lost"] == 0 and result["permits_after_drain"] == 0 else 1


class _Faults:
    def __init__(self, server: RedisServer, relays: list[RedisRelay], rng: random.Random):
        self.server, self.relays, self.rng = server, relays, rng
        self.started: Counter[str] = Counter()

    def begin(self, fault: str) -> None:
        self.started[fault] += 1
        s, relays = self.server, self.relays
        if fault == "oom":
            s.command("CONFIG", "SET", "maxmemory", "1")
        elif fault == "readonly":
            s.command("REPLICAOF", "127.0.0.1", str(free_port()))
        elif fault == "black_hole_all":
            for r in relays:
                r.black_hole()
        elif fault == "black_hole_one":
            self.rng.choice(relays).black_hole()
        elif fault == "sigstop":
            s.pause()
        elif fault == "kill9_restart":
            s.kill()
        elif fault == "latency":
            for r in relays:
                r.latency_s = 0.2

    def repeat(self, fault: str) -> None:
        if fault == "reset":
            for r in self.relays:
                r.reset()
        elif fault == "client_kill":
            self.server.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

    def heal(self) -> None:
        s = self.server
        s.start()  # also resumes a paused one
        s.command("CONFIG", "SET", "maxmemory", "0")
        s.command("REPLICAOF", "NO", "ONE")
        for r in self.relays:
            r.heal()
            r.latency_s = 0.0


async def run_chaos(minutes: float, fault_every_s: float, clients: int, seed: int,
                    policy: str = "local_share") -> dict[str, Any]:
    from proxy.app import start_proxy
    from proxy.config import parse_config
    from proxy.limits.redis import mark_fresh

    rng = random.Random(seed)
    server = RedisServer()
    server.start()
    mark_fresh(server.url)
    mock = MockLLM(MockLLMConfig(batch_size=64, ttft_s=0.02, tpot_s=0.02))
    await mock.start()
    relays = [RedisRelay(server.port) for _ in range(HOSTS)]
    for relay in relays:
        await relay.start()
    proxies = []
    for relay in relays:
        config = {"upstreams": {"up": {"url": mock.url}},
                  "models": {"m": {"upstreams": ["up"], "max_in_flight": CAP}},
                  "store": relay.url(), "queue": {"max_wait_s": 5.0},
                  "redis": {"heartbeat_s": 0.5, "lease_ttl_s": 3.0, "command_timeout_s": 1.0,
                            "on_store_error_concurrency": policy}}
        proxies.append(await start_proxy(parse_config(config, environ={}), port=0))
    faults = _Faults(server, relays, rng)
    statuses: Counter[str] = Counter()
    slowest = 0.0
    stop = asyncio.Event()

    async def client(i: int) -> None:
        nonlocal slowest
        url = proxies[i % HOSTS].url + "/v1/chat/completions"
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with session.post(url, json=body, headers={
                        "x-mock-fault": f"tokens:{rng.randint(2, 20)}"}) as response:
                    text = await response.text()
                    key = str(response.status)
                    if response.status == 503 and "store_unavailable" in text:
                        key = "503 store_unavailable"
            except (aiohttp.ClientError, TimeoutError) as exc:
                key = f"no answer ({type(exc).__name__})"
            statuses[key] += 1
            slowest = max(slowest, time.monotonic() - started)
            if not key.startswith("200"):
                await asyncio.sleep(0.1)

    t0 = time.monotonic()
    end = t0 + minutes * 60
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        loops = [asyncio.create_task(client(i)) for i in range(clients)]
        while time.monotonic() < end:
            await asyncio.sleep(min(fault_every_s / 2, max(0.0, end - time.monotonic())))
            if time.monotonic() >= end:
                break
            fault = rng.choice(FAULTS)
            faults.begin(fault)
            until = time.monotonic() + rng.uniform(2.0, 8.0)
            while time.monotonic() < until:
                faults.repeat(fault)
                await asyncio.sleep(0.3)
            faults.heal()
            await asyncio.sleep(max(0.0, fault_every_s / 2 - 8.0))
        faults.heal()
        await asyncio.sleep(5.0)  # every host back on Redis
        stop.set()
        await asyncio.gather(*loops)
    held = 0
    for running in proxies:
        await running.proxy.store.drain()
    await asyncio.sleep(1.0)
    snapshot = await proxies[0].proxy.store.snapshot()
    held = sum(s.in_flight + s.queued for s in snapshot.resources.values())
    degraded: Counter[str] = Counter()
    for running in proxies:
        for cause, seconds in running.proxy.store.degraded_seconds().items():
            degraded[cause] += round(seconds, 1)
    lost = sum(n for k, n in statuses.items()
               if k.startswith("no answer") or (k[:1] == "5" and "store_unavailable" not in k))
    result = {
        "minutes": round((time.monotonic() - t0) / 60, 2), "hosts": HOSTS, "cap": CAP,
        "clients": clients, "fault_every_s": fault_every_s, "seed": seed, "policy": policy,
        "served": statuses.get("200", 0), "lost": lost, "statuses": dict(statuses),
        "upstream_peak": mock.state.peak, "peak_over_cap": max(0, mock.state.peak - CAP),
        "bound": CAP + (HOSTS - 1) * (CAP // HOSTS) if policy == "local_split" else CAP,
        "permits_after_drain": held, "slowest_request_s": round(slowest, 2),
        "degraded_s_by_cause": dict(degraded), "faults": dict(faults.started),
    }
    for running in proxies:
        await running.close()
    for relay in relays:
        await relay.close()
    await mock.stop()
    server.stop()
    return result
