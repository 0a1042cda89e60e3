"""``python -m loadtest demo``: watch llm-throttle hold a cap and drain its queue (~20 s).

Starts two subprocesses on free loopback ports, the mock LLM (a GPU that serves ``--batch``
requests at full speed and slows everyone down past that) and ``llm-throttle serve
--upstream MOCK --max-in-flight CAP`` (the embedded memory store), then sends ``--clients``
back-to-back streaming clients through the proxy for ``--duration`` seconds and prints once a
second what the upstream and the queue look like. Exit status 0 only if the cap held, every
request succeeded and the queue drained to zero.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.generator import LoadSpec, parse_proxy_status, run_load
from loadtest.processes import ServiceError, ServiceGroup

from .runtime import loop_factory


@dataclass
class DemoOutcome:
    requests: int
    ok: int
    peak: int
    cap: int
    queue_depth: float
    in_flight: float

    @property
    def success(self) -> bool:
        return (self.peak <= self.cap and self.ok == self.requests and self.requests > 0
                and self.queue_depth == 0 and self.in_flight == 0)


def _live_line(point: dict[str, Any], cap: int) -> str:
    upstream = point.get("upstream_in_flight")
    queued = point.get("queue_depth")
    return (f"{point['t']:5.1f}s  upstream in flight "
            f"{'?' if upstream is None else f'{upstream:.0f}'}/{cap} | queued "
            f"{'?' if queued is None else f'{queued:.0f}'} | done {point['completed']} "
            f"| errors {point['completed'] - point['ok']}")


async def run_demo(args: argparse.Namespace, say: Callable[[str], None] = print) -> DemoOutcome:
    mock_config = {"batch_size": args.batch, "ttft_s": args.ttft, "tpot_s": args.tpot,
                   "output_tokens": args.tokens, "thrash": 0.5}
    service_s = args.ttft + args.tpot * (args.tokens - 1)
    workdir = Path(tempfile.mkdtemp(prefix="llm-throttle-demo-"))
    async with ServiceGroup(workdir) as group:
        mock = await group.start_mock(mock_config)
        proxy = await group.start_quick_proxy(mock.url, args.cap)
        say(f"mock LLM    {mock.url}  (serves {args.batch} at full speed, "
            f"~{service_s:.2f} s per request, slows everyone down past {args.batch})")
        say(f"llm-throttle {proxy.url}  (llm-throttle serve --upstream {mock.url} "
            f"--max-in-flight {args.cap})")
        say(f"sending {args.clients} streaming clients through the proxy for "
            f"{args.duration:g} s ({args.clients / args.cap:.0f}x the cap), then letting the "
            "queue drain...\n")
        spec = LoadSpec(
            base_url=proxy.url + "/v1", clients=args.clients, duration=args.duration,
            stream=True, max_tokens=args.tokens, timeout=120.0,
            upstream_metrics=[mock.url + "/metrics"], proxy_status=proxy.url + "/throttle/status",
            sample_interval=1.0, label="demo")
        result = await run_load(spec, on_sample=lambda p: say(_live_line(p, args.cap)))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(mock.url + "/mock/stats") as response:
                stats = await response.json()
            async with session.get(proxy.url + "/throttle/status") as response:
                status = parse_proxy_status(await response.json())
    s = result.summary
    outcome = DemoOutcome(s["count"], s["ok"], int(stats["peak"]), args.cap,
                          status["queue_depth"] or 0.0, status["proxy_in_flight"] or 0.0)
    lat = s["latency"]
    say("")
    say(f"{outcome.requests} requests, {outcome.ok} succeeded, "
        f"{outcome.requests - outcome.ok} failed ({s['goodput_rps']:.1f} req/s)")
    say(f"cap held:      peak in flight at the mock {outcome.peak} (cap {args.cap})"
        + ("" if outcome.peak <= args.cap else "  <-- EXCEEDED"))
    say(f"queue drained: depth {outcome.queue_depth:.0f}, in flight {outcome.in_flight:.0f}")
    if lat["p50"] is not None:
        say(f"latency p50 {lat['p50']:.2f} s, p99 {lat['p99']:.2f} s: about "
            f"{service_s:.2f} s of generation, the rest waiting in the proxy's queue")
    r = args.clients / args.batch
    if r > 1:
        slowdown = r * (1 + 0.5 * (r - 1))
        say(f"without the proxy all {args.clients} would hit the mock at once and each would "
            f"take ~{slowdown:.0f}x longer ({service_s * slowdown:.1f} s); "
            "`python -m loadtest scenario overload` measures it")
    say("OK" if outcome.success else "FAILED")
    return outcome


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=32, help="back-to-back clients")
    parser.add_argument("--duration", type=float, default=12.0,
                        help="seconds of new requests (then the queue drains)")
    parser.add_argument("--cap", type=int, default=4, help="the proxy's --max-in-flight")
    parser.add_argument("--batch", type=int, default=4, help="the mock's full-speed batch")
    parser.add_argument("--ttft", type=float, default=0.2, help="mock seconds to first token")
    parser.add_argument("--tpot", type=float, default=0.02, help="mock seconds per token")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer")


async def _stoppable(args: argparse.Namespace) -> DemoOutcome:
    """The demo, cancelled (so both servers are stopped) on SIGTERM as on Ctrl-C."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_demo(args, lambda line: print(line, flush=True))


def cli_main(args: argparse.Namespace) -> int:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            outcome = runner.run(_stoppable(args))
        except ServiceError as exc:
            print(f"demo could not start: {exc}", file=sys.stderr)
            return 1
    return 0 if outcome.success else 1
