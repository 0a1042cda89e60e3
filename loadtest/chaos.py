"""Chaos soak (``python -m loadtest chaos --minutes 20 --out results/chaos``); not run in CI.

Three proxy hosts (in this process, each through its own ``RedisRelay``) share one
``redis-server`` that has a replica; clients loop against all three; every ``--fault-every``
seconds one fault starts and lasts a few seconds (``chaos_faults``: every kind once per
shuffled cycle). At the end every fault is healed, the load stops, and the pool drains.

Reported, each with what it must be:

- requests served, refused by the policy (429 / 503 ``store_unavailable``), lost (a 5xx
  other than the policy's 503, or no answer: 0) and 500s (0);
- the upstream's peak in flight against the cap (over cap: 0), overall and per fault kind,
  during the fault and after its heal (until the next fault);
- permits held after the drain (in flight, queued: 0);
- the longest wait for an answer's headers against max wait + ``command_timeout_s`` (none
  over it by more than ``WAIT_SLACK_S``; those within it are counted apart);
- tracebacks in the proxies' log (0), and its warning lines;
- degraded host-seconds per cause, faults drawn per kind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from .chaos_faults import REPEAT_EVERY_S, Fault, Faults
from .mock_llm import MockLLM, MockLLMConfig
from .redis_relay import RedisRelay
from .redis_server import RedisServer, master_and_replica

CAP = 6
HOSTS = 3
MAX_WAIT_S = 5.0
COMMAND_TIMEOUT_S = 1.0
#: an answer's headers may trail the store's bound by this much (writing the answer, the
#: upstream's first byte, event-loop lag on a shared machine); a store that waited one more
#: call past its bound is far beyond it
WAIT_SLACK_S = 0.25
#: log lines kept for ``chaos.log`` (the counts cover all of them)
LOG_LINES_KEPT = 2000


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--fault-every", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--policy", default="local_share",
                        choices=("local_share", "local_split", "closed"),
                        help="redis.on_store_error_concurrency of the three hosts")
    parser.add_argument("--faults", default=",".join(f.value for f in Fault),
                        help="the kinds to draw from (comma-separated)")
    parser.add_argument("--out", type=Path, default=Path("results/chaos"))


def cli_main(args: argparse.Namespace) -> int:
    log = _LogWatch()
    logging.getLogger().addHandler(log)
    try:
        kinds = tuple(Fault(name) for name in args.faults.split(","))
        result = asyncio.run(run_chaos(args.minutes, args.fault_every, args.clients,
                                       args.seed, args.policy, log, kinds))
    finally:
        logging.getLogger().removeHandler(log)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chaos.json").write_text(json.dumps(result, indent=2))
    (args.out / "chaos.log").write_text("\n".join(log.lines) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if not result["failed"] else 1


class _LogWatch(logging.Handler):
    """Counts the proxies' warnings and tracebacks (any record with exception info)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings = 0
        self.tracebacks = 0
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.warnings += 1
        text = self.format(record)
        if record.exc_info or "Traceback" in text:
            self.tracebacks += 1
        if len(self.lines) < LOG_LINES_KEPT:
            self.lines.append(text)


def _leases(server: RedisServer) -> list[str]:
    """The leases Redis still holds (for a report that found permits after the drain)."""
    reply = server.command("HGETALL", "{llmthrottle}:leases").decode(errors="replace")
    return [line for line in reply.split("\r\n") if line.startswith("[")]


class _Peaks:
    """The upstream's peak in flight per phase (``during <fault>``, ``after <fault>``)."""

    def __init__(self, mock: MockLLM):
        self.mock = mock
        self.by_phase: dict[str, int] = {}
        self.phase = "start"

    def enter(self, phase: str) -> None:
        state = self.mock.state
        self.by_phase[self.phase] = max(self.by_phase.get(self.phase, 0), state.peak)
        state.peak = state.in_flight  # the next phase starts from what is in flight now
        self.phase = phase

    def of(self, prefix: str) -> dict[str, int]:
        return {phase.removeprefix(prefix): peak for phase, peak in sorted(self.by_phase.items())
                if phase.startswith(prefix)}


async def run_chaos(minutes: float, fault_every_s: float, clients: int, seed: int,
                    policy: str = "local_share", log: _LogWatch | None = None,
                    kinds: tuple[Fault, ...] = tuple(Fault)) -> dict[str, Any]:
    from proxy.config import parse_config
    from proxy.limits.redis import mark_fresh
    from proxy.runner import start_proxy

    rng = random.Random(seed + 1)  # the clients' draws; the faults have their own
    server, replica = master_and_replica()
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
                  "store": relay.url(), "queue": {"max_wait_s": MAX_WAIT_S},
                  "redis": {"heartbeat_s": 0.5, "lease_ttl_s": 3.0,
                            "command_timeout_s": COMMAND_TIMEOUT_S,
                            "on_store_error_concurrency": policy}}
        proxies.append(await start_proxy(parse_config(config, environ={}), port=0))
    faults = Faults(server, replica, relays, random.Random(seed), kinds)
    timeline: list[list[Any]] = []
    peaks = _Peaks(mock)
    statuses: Counter[str] = Counter()
    wait_bound_s = MAX_WAIT_S + COMMAND_TIMEOUT_S
    waits = {"max_s": 0.0, "at_bound": 0, "over_bound": 0}
    stop = asyncio.Event()

    async def client(i: int) -> None:
        url = proxies[i % HOSTS].url + "/v1/chat/completions"
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with session.post(url, json=body, headers={
                        "x-mock-fault": f"tokens:{rng.randint(2, 20)}"}) as response:
                    waited = time.monotonic() - started  # admission: the headers came
                    text = await response.text()
                    key = str(response.status)
                    if response.status == 503 and "store_unavailable" in text:
                        key = "503 store_unavailable"
            except (aiohttp.ClientError, TimeoutError) as exc:
                key = f"no answer ({type(exc).__name__})"
                waited = time.monotonic() - started
            statuses[key] += 1
            waits["max_s"] = max(waits["max_s"], waited)
            if waited > wait_bound_s + WAIT_SLACK_S:
                waits["over_bound"] += 1
            elif waited > wait_bound_s:
                waits["at_bound"] += 1
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
            fault = faults.draw()
            timeline.append([round(time.time(), 3), "begin", fault.value])
            peaks.enter(f"during {fault.value}")
            faults.begin(fault)
            until = time.monotonic() + faults.rng.uniform(2.0, 8.0)
            while time.monotonic() < until:
                await asyncio.sleep(REPEAT_EVERY_S)
                faults.repeat(fault)
            faults.heal()
            timeline.append([round(time.time(), 3), "heal", fault.value])
            peaks.enter(f"after {fault.value}")
            await asyncio.sleep(max(0.0, fault_every_s / 2 - 8.0))
        faults.heal()
        await asyncio.sleep(5.0)  # every host back on Redis
        stop.set()
        await asyncio.gather(*loops)
    peaks.enter("end")
    for running in proxies:
        await running.proxy.store.drain()
    await asyncio.sleep(1.0)
    snapshot = await proxies[0].proxy.store.snapshot()
    held = sum(s.in_flight + s.queued for s in snapshot.resources.values())
    held += snapshot.queue_depth
    leases = _leases(faults.server) if held else []
    degraded: Counter[str] = Counter()
    for running in proxies:
        for cause, seconds in running.proxy.store.degraded_seconds().items():
            degraded[cause] += round(seconds, 1)
    lost = sum(n for k, n in statuses.items()
               if k.startswith("no answer") or (k[:1] == "5" and "store_unavailable" not in k))
    bound = CAP + (HOSTS - 1) * (CAP // HOSTS) if policy == "local_split" else CAP
    upstream_peak = max(peaks.by_phase.values())
    result: dict[str, Any] = {
        "minutes": round((time.monotonic() - t0) / 60, 2), "hosts": HOSTS, "cap": CAP,
        "clients": clients, "fault_every_s": fault_every_s, "seed": seed, "policy": policy,
        "served": statuses.get("200", 0), "lost": lost, "http_500": statuses.get("500", 0),
        "refused_429": statuses.get("429", 0),
        "refused_503": statuses.get("503 store_unavailable", 0), "statuses": dict(statuses),
        "upstream_peak": upstream_peak, "bound": bound,
        "peak_over_bound": max(0, upstream_peak - bound),
        "peak_during_fault": peaks.of("during "), "peak_after_heal": peaks.of("after "),
        "permits_after_drain": held,
        "max_wait_s": round(waits["max_s"], 3), "wait_bound_s": wait_bound_s,
        "waits_within_slack_of_bound": waits["at_bound"], "wait_slack_s": WAIT_SLACK_S,
        "waits_over_bound": waits["over_bound"],
        "tracebacks_in_log": None if log is None else log.tracebacks,
        "warning_lines_in_log": None if log is None else log.warnings,
        "degraded_s_by_cause": dict(degraded), "faults": dict(faults.started),
        "faults_never_drawn": [f.value for f in kinds if f.value not in faults.started],
        "leases_after_drain": leases, "timeline": timeline,
    }
    result["failed"] = [name for name, bad in (
        ("lost", lost), ("http_500", result["http_500"]),
        ("peak_over_bound", result["peak_over_bound"]), ("permits_after_drain", held),
        ("waits_over_bound", waits["over_bound"]), ("tracebacks_in_log", log and log.tracebacks),
    ) if bad]
    for running in proxies:
        await running.close()
    for relay in relays:
        await relay.close()
    await mock.stop()
    replica.stop()
    server.stop()
    return result
