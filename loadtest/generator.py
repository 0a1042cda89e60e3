"""Load generator for any OpenAI-compatible endpoint (``python -m loadtest run``).

Two arrival models: *closed loop* (``clients`` workers, each sends its next request when the
previous one ends: measures capacity) and *open loop* (Poisson arrivals at ``rate`` per second
whatever the server does: shows queueing and collapse). Every run is bounded by a request
count and/or a duration, and each request by ``timeout``.

aiohttp is used directly, not the SDK, so the generator costs little next to what it measures.
While it runs, a sampler records every ``sample_interval`` seconds the requests done and, when
given, the upstream's vLLM gauges and the proxy's ``/throttle/status`` queue depth.

The work is spread over modules with one job each: ``load_spec`` (what to send),
``load_request`` (the run's state, request bodies, one request), ``arrivals`` (the closed and
open loops), ``load_sampling`` (the time series), ``load_result`` (records, summary, streamed
tokens by slot). This module runs them (``run_load``) and is the command line; the names other
modules import from here stay available.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from .arrivals import closed_loop, open_loop
from .load_request import QUEUE_WAIT_HEADER, LoadRun
from .load_result import (
    STREAM_SLOT_S,
    LoadResult,
    RequestRecord,
    percentile,
    streamed_rate,
    streamed_tokens,
    summarize,
)
from .load_sampling import (
    parse_proxy_status,
    parse_vllm_gauges,
    progress_line,
    sample_until,
    take_sample,
)
from .load_spec import ClientClass, LoadSpec
from .runtime import loop_factory

__all__ = [
    "QUEUE_WAIT_HEADER",
    "STREAM_SLOT_S",
    "ClientClass",
    "LoadResult",
    "LoadSpec",
    "RequestRecord",
    "cli_main",
    "configure_parser",
    "format_summary",
    "parse_mix",
    "parse_proxy_status",
    "parse_vllm_gauges",
    "percentile",
    "run_load",
    "spec_from_args",
    "streamed_rate",
    "summarize",
]


async def run_load(
    spec: LoadSpec, on_sample: Callable[[dict[str, Any]], None] | None = None
) -> LoadResult:
    """Run one bounded load test and return every record, the time series and a summary.

    ``on_sample`` sees every point of the time series as it is taken (live displays).
    """
    spec.validate()
    run = LoadRun(spec)
    # limit=0: the connector must never cap concurrency below what the test asks for.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    scrape_timeout = aiohttp.ClientTimeout(total=max(0.2, spec.sample_interval * 0.8))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session, \
            aiohttp.ClientSession(timeout=scrape_timeout) as scraper:
        run.t0 = time.perf_counter()
        run.deadline = spec.duration if spec.duration is not None else math.inf
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_until(run, scraper, stop, on_sample))
        try:
            if spec.rate is not None:
                await open_loop(run, session)
            else:
                await closed_loop(run, session)
        finally:
            elapsed = run.now()
            stop.set()
            await sampler
        run.series.append(await take_sample(run, scraper))
        if on_sample is not None:
            on_sample(run.series[-1])
    if spec.progress:
        sys.stderr.write(progress_line(run) + "\n")
    run.records.sort(key=lambda r: r.start)
    spec_dict = asdict(spec)
    spec_dict["mode"] = spec.mode
    for c in spec_dict["mix"]:
        c["api_key"] = c["api_key"][:4] + "..." if len(c["api_key"]) > 8 else "***"
    summary = summarize(run.records, elapsed)
    streamed = streamed_tokens(run.streamed)
    if streamed is not None:
        summary["streamed_tokens"] = streamed
    return LoadResult(spec_dict, run.records, run.series, summary)


# -- command line ------------------------------------------------------------------------------


def parse_mix(text: str) -> list[ClientClass]:
    """``name:KEY:weight,name2:KEY2:weight2`` (weight defaults to 1)."""
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise argparse.ArgumentTypeError(f"bad mix entry {item!r}: want name:KEY[:weight]")
        out.append(ClientClass(parts[0], parts[1], float(parts[2]) if len(parts) == 3 else 1.0))
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    d = LoadSpec()
    parser.add_argument("--base-url", action="append", metavar="URL",
                        help=f"OpenAI-compatible base (…/v1; default {d.base_url}); repeat it "
                        "to spread the requests round-robin (e.g. over proxy replicas)")
    parser.add_argument("--model", default=d.model)
    arrivals = parser.add_mutually_exclusive_group()
    arrivals.add_argument("--clients", type=int, default=d.clients,
                          help="closed loop: back-to-back workers")
    arrivals.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    parser.add_argument("--requests", type=int, help="stop after this many requests")
    parser.add_argument("--duration", type=float, help="stop starting requests after S seconds")
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=d.stream)
    parser.add_argument("--max-tokens", type=int, default=d.max_tokens)
    parser.add_argument("--prompt-chars", type=int, default=d.prompt_chars)
    parser.add_argument("--api-key", action="append", default=[],
                        help="repeat for several equally weighted clients")
    parser.add_argument("--mix", type=parse_mix,
                        help="name:KEY:weight,... (e.g. interactive:K1:0.2,batch:K2:0.8)")
    parser.add_argument("--timeout", type=float, default=d.timeout, help="per request, seconds")
    parser.add_argument("--upstream-metrics", action="append", default=[], metavar="URL",
                        help="vLLM-style /metrics to sample (repeatable; summed)")
    parser.add_argument("--proxy-status", metavar="URL", help="proxy /throttle/status to sample")
    parser.add_argument("--sample-interval", type=float, default=d.sample_interval)
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                        help="extra request header (repeatable), e.g. x-mock-fault:delay:1")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--label", help="name of this run in reports (default: --out stem)")
    parser.add_argument("--out", help="write the JSON result here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def spec_from_args(args: argparse.Namespace) -> LoadSpec:
    mix = args.mix or [ClientClass(f"key{i + 1}", k) for i, k in enumerate(args.api_key)] or [
        ClientClass("default", "x")
    ]
    headers = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            raise SystemExit(f"bad --header {item!r}: want NAME:VALUE")
        headers[name.strip()] = value.strip()
    label = args.label or (Path(args.out).stem if args.out else "")
    urls = args.base_url or [LoadSpec().base_url]
    return LoadSpec(
        base_url=urls[0], base_urls=urls if len(urls) > 1 else [], model=args.model,
        clients=args.clients, rate=args.rate,
        requests=args.requests, duration=args.duration, stream=args.stream,
        max_tokens=args.max_tokens, prompt_chars=args.prompt_chars, mix=mix,
        timeout=args.timeout, upstream_metrics=args.upstream_metrics,
        proxy_status=args.proxy_status, sample_interval=args.sample_interval,
        headers=headers, seed=args.seed, label=label,
        progress=not args.quiet and sys.stderr.isatty(),
    )


def format_summary(summary: dict[str, Any]) -> str:
    lat, ttft = summary["latency"], summary["ttft"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f}ms"

    return (
        f"{summary['count']} requests, {summary['ok']} ok, errors {summary['errors'] or 'none'}\n"
        f"throughput {summary['throughput_rps']:.1f} req/s, goodput "
        f"{summary['goodput_rps']:.1f} req/s {summary['goodput_tokens_per_s']:.0f} tok/s\n"
        f"latency p50 {ms(lat['p50'])} p90 {ms(lat['p90'])} p99 {ms(lat['p99'])} "
        f"max {ms(lat['max'])}; ttft p50 {ms(ttft['p50'])} p99 {ms(ttft['p99'])}"
    )


def cli_main(args: argparse.Namespace) -> int:
    """``python -m loadtest run``: print a summary, optionally write the JSON result."""
    spec = spec_from_args(args)
    try:
        spec.validate()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result = runner.run(run_load(spec))
    print(format_summary(result.summary))
    if args.out:
        print(f"wrote {result.save(args.out)}")
    return 0 if result.summary["ok"] > 0 else 1
