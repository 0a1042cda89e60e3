"""A bounded soak (``python -m loadtest soak --minutes 30 --out results/soak``); not run in CI.

The mock LLM and ``llm-throttle serve`` run as subprocesses (see :mod:`loadtest.processes`),
and an open-loop mix of requests runs against the proxy for the given minutes: plain and
streamed calls, clients that leave while queued or mid-stream, upstream faults (die mid-stream,
hang past the upstream read timeout, 429, 503) and a share of bad input. Every few seconds the
proxy's RSS (``VmRSS``), open file descriptors and ``/throttle/status`` are sampled.

At the end the load stops, every client finishes or leaves, and the proxy is given a few
seconds to drain; the permits still outstanding then (in flight and queued, over every
resource) must be zero. Each request is classified by cause (status and OpenAI error code, or
what the client saw) and checked against what its kind allows: a cause outside that set is
*unexpected* (a 500 from the proxy is always unexpected). Outputs: ``soak.json``,
``soak-rss.png`` and ``soak.md`` in the ``--out`` folder.

Layout: this module starts the servers, drives the load and judges the outcome; the request
mix is in ``soak_requests``, the sampling in ``soak_sampling``, the spec and result records in
``soak_result`` and the outputs in ``soak_report``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.processes import CODE_ROOT, ServiceGroup
from loadtest.soak_report import markdown_summary, write_outputs, write_report
from loadtest.soak_requests import KEYS, KINDS, MODEL, run_request
from loadtest.soak_result import SoakResult, SoakSpec
from loadtest.soak_sampling import held_permits, log_errors, read_status, sample

# held_permits, log_errors and the report writers are part of this module's interface
__all__ = [
    "SoakResult",
    "SoakSpec",
    "cli_main",
    "configure_parser",
    "held_permits",
    "log_errors",
    "markdown_summary",
    "passed",
    "run_soak",
    "write_outputs",
    "write_report",
]


# -- the run -----------------------------------------------------------------------------------


def proxy_config(spec: SoakSpec, upstream: str, store: str) -> dict[str, Any]:
    return {
        "store": store,
        "max_body_bytes": 256 * 1024,
        "upstreams": {"mock": {"url": upstream,
                               "read_timeout_s": spec.upstream_read_timeout_s}},
        "models": {MODEL: {"upstreams": ["mock"], "max_in_flight": spec.max_in_flight}},
        "clients": {"interactive": {"key": KEYS["interactive"], "priority": "interactive"},
                    "batch": {"key": KEYS["batch"], "priority": "batch"}},
        "queue": {"max_depth": 100, "max_wait_s": 5},
        "shutdown_grace_s": 5,
    }


def machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=CODE_ROOT, capture_output=True,
                                  text=True, timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "proxy"))}


async def _drive(spec: SoakSpec, session: aiohttp.ClientSession, base: str,
                 result: SoakResult, done: Counter[str], by_kind: dict[str, Counter[str]]) -> None:
    """Open-loop arrivals for ``spec.minutes``, then wait for every client to finish."""
    rng = random.Random(spec.seed)
    names = [k.name for k in KINDS]
    weights = [k.weight for k in KINDS]
    open_tasks: set[asyncio.Task[None]] = set()

    async def run_one(kind: str, seed: int) -> None:
        cause = await run_request(session, base, kind, random.Random(seed), spec.client_timeout_s)
        done[cause] += 1
        by_kind[kind][cause] += 1

    t0 = time.monotonic()
    deadline = t0 + spec.minutes * 60
    next_at = t0
    while True:
        next_at += rng.expovariate(spec.rate)
        if next_at >= deadline:
            break
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if len(open_tasks) >= spec.max_open:
            result.skipped_arrivals += 1
            continue
        task = asyncio.create_task(run_one(rng.choices(names, weights)[0], rng.getrandbits(32)))
        open_tasks.add(task)
        task.add_done_callback(open_tasks.discard)
        result.requests += 1
    if open_tasks:
        await asyncio.wait(open_tasks, timeout=spec.client_timeout_s + 5)


async def _drain(session: aiohttp.ClientSession, base: str,
                 timeout_s: float) -> dict[str, float]:
    """Wait until nothing is held; returns what still is when ``timeout_s`` runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        doc = await read_status(session, base)
        held = held_permits(doc) if doc is not None else {"status unreadable": 1.0}
        if not held or time.monotonic() > deadline:
            return held
        await asyncio.sleep(0.2)


async def run_soak(spec: SoakSpec) -> SoakResult:
    """Run the whole soak; the servers are stopped whatever happens."""
    # Absolute: the servers run with their own folder as working directory.
    out = Path(spec.out).resolve()
    result = SoakResult(spec={**asdict(spec), "out": str(out)}, machine=machine(),
                        started_at=time.time())
    done: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {k.name: Counter() for k in KINDS}
    async with ServiceGroup(out / "servers") as group:
        mock = await group.start_mock({"batch_size": spec.max_in_flight, "ttft_s": 0.05,
                                       "tpot_s": 0.01, "output_tokens": 16})
        store = spec.store
        if store == "redis":
            store = (await group.start_redis()).url
        proxy = await group.start_proxy("proxy", proxy_config(spec, mock.url, store), env={})
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            t0 = time.monotonic()
            stop = asyncio.Event()

            async def sampler() -> None:
                while not stop.is_set():
                    result.samples.append(await sample(session, proxy, t0, done))
                    try:
                        await asyncio.wait_for(stop.wait(), spec.sample_interval_s)
                    except TimeoutError:
                        pass

            sampling = asyncio.create_task(sampler())
            try:
                await _drive(spec, session, proxy.url, result, done, by_kind)
                result.outstanding = await _drain(session, proxy.url, spec.drain_timeout_s)
            finally:
                stop.set()
                await sampling
            result.samples.append(await sample(session, proxy, t0, done))
            result.elapsed_s = round(time.monotonic() - t0, 1)
            async with session.get(mock.url + "/mock/stats") as response:
                result.upstream_in_flight_after = (await response.json())["in_flight"]
        group.stop_all()
        result.proxy_exit_code = proxy.process.returncode
        result.proxy_log_errors = log_errors(proxy.log_path.read_text(errors="replace"))
    result.by_cause = dict(done.most_common())
    result.by_kind = {name: dict(c.most_common()) for name, c in by_kind.items()}
    expected = {k.name: k.expected for k in KINDS}
    unexpected: Counter[str] = Counter()
    for name, causes in by_kind.items():
        for cause, n in causes.items():
            if cause not in expected[name] or cause.startswith("500"):
                unexpected[f"{name}: {cause}"] += n
    result.unexpected = dict(unexpected.most_common())
    return result


# -- command line ------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = SoakSpec()
    parser.add_argument("--minutes", type=float, default=defaults.minutes)
    parser.add_argument("--out", type=Path, default=defaults.out, help="output folder")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="requests per second")
    parser.add_argument("--store", default=defaults.store,
                        help="memory, redis (starts a redis-server) or a redis:// URL")
    parser.add_argument("--sample-interval", type=float, default=defaults.sample_interval_s,
                        help="seconds between RSS and status samples")
    parser.add_argument("--max-in-flight", type=int, default=defaults.max_in_flight)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--report", type=Path, metavar="PAGE",
                        help="splice a Soak section into this Markdown page (plot to img/)")
    parser.add_argument("--from-json", type=Path, metavar="SOAK_JSON",
                        help="do not run: re-render the outputs of an earlier soak.json")


def spec_from_args(args: argparse.Namespace) -> SoakSpec:
    return SoakSpec(minutes=args.minutes, out=args.out, rate=args.rate, store=args.store,
                    sample_interval_s=args.sample_interval, max_in_flight=args.max_in_flight,
                    seed=args.seed)


def passed(result: SoakResult) -> bool:
    """Nothing held after the drain, nothing unexpected, no traceback in the proxy log."""
    return (result.permits_outstanding == 0 and not result.unexpected
            and not result.proxy_log_errors and result.upstream_in_flight_after == 0)


def cli_main(args: argparse.Namespace) -> int:
    """Exit 0 when :func:`passed`, 1 otherwise (the summary says why)."""
    spec = spec_from_args(args)
    if args.from_json:
        result = SoakResult.from_json(json.loads(args.from_json.read_text()))
        out = args.from_json.parent
    else:
        result = asyncio.run(run_soak(spec))
        out = Path(spec.out)
    paths = write_outputs(result, out)
    if args.report:
        paths.append(write_report(result, args.report, out / "soak-rss.png"))
    print(markdown_summary(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0 if passed(result) else 1
