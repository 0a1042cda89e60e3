"""``python -m loadtest sweep`` (also ``llm-throttle sweep``): find an engine's knee.

Steps a closed loop of streaming chat clients through concurrency 1, 2, 4, 8, ... (up to
``--max-concurrency``) against any OpenAI-compatible origin (the engine itself or the proxy
in front of it), each level for ``--step-s`` seconds, with realistic request sizes: lognormal
prompt and output lengths around ``--prompt-tokens`` / ``--output-tokens``, or pairs from a
JSONL file (``{"prompt_tokens": 812, "max_tokens": 256}`` per line). Per level: output
tokens/s, requests/s, TTFT and time per output token p50/p99.

The knee is the last level whose successor adds less than ``--min-gain`` (default 10%) of
throughput, or whose successor's TPOT p50 exceeds ``--max-slowdown`` x the TPOT at
concurrency 1 (latency would pay for what throughput no longer gains). The sweep stops a
level after it has gone past the knee, and always within ``--time-limit`` seconds. It prints
a table, the recommended ``max_in_flight`` (the knee) with a config snippet, and writes a
plot of throughput and latency against concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.generator import percentile
from loadtest.runtime import loop_factory
from loadtest.sse import SSEData

#: prompt text: one word per token, near enough for sizing
_WORD = "token "


@dataclass
class SweepSpec:
    url: str  # origin or base URL (``/v1`` is added when missing)
    model: str
    api_key: str | None = None
    max_concurrency: int = 64
    step_s: float = 15.0
    time_limit_s: float = 600.0
    prompt_tokens: int = 256
    output_tokens: int = 128
    sigma: float = 0.6
    sizes: list[tuple[int, int]] = field(default_factory=list)
    min_gain: float = 0.10
    max_slowdown: float = 2.0
    seed: int = 1
    progress: bool = True
    levels: list[int] = field(default_factory=list)

    def level_list(self) -> list[int]:
        if self.levels:
            return sorted(set(self.levels))
        out, c = [], 1
        while c <= self.max_concurrency:
            out.append(c)
            c *= 2
        return out


@dataclass
class Level:
    concurrency: int
    requests: int = 0
    failed: int = 0
    seconds: float = 0.0
    output_tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def fail(self, why: str) -> None:
        self.failed += 1
        self.errors[why] = self.errors.get(why, 0) + 1

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def figures(self) -> dict[str, Any]:
        ttft, tpot = sorted(self.ttft), sorted(self.tpot)
        return {
            "concurrency": self.concurrency, "requests": self.requests, "failed": self.failed,
            "tokens_per_s": round(self.tokens_per_s, 2),
            "requests_per_s": round(self.requests_per_s, 3),
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
            "tpot_p50_s": percentile(tpot, 50), "tpot_p99_s": percentile(tpot, 99),
            "errors": dict(self.errors),
        }


def chat_url(url: str) -> str:
    url = url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    return url + "/chat/completions"


def load_sizes(path: str) -> list[tuple[int, int]]:
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out.append((int(row["prompt_tokens"]), int(row["max_tokens"])))
    if not out:
        raise ValueError(f"{path}: no (prompt_tokens, max_tokens) pairs")
    return out


class Sizes:
    """Request sizes: from the file's pairs in turn, or lognormal around the medians."""

    def __init__(self, spec: SweepSpec):
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.i = 0

    def next(self) -> tuple[int, int]:
        if self.spec.sizes:
            pair = self.spec.sizes[self.i % len(self.spec.sizes)]
            self.i += 1
            return pair
        s = self.spec

        def draw(median: int) -> int:
            return max(1, min(8 * median, round(median * math.exp(self.rng.gauss(0, s.sigma)))))

        return draw(s.prompt_tokens), draw(s.output_tokens)


async def _one(session: aiohttp.ClientSession, spec: SweepSpec, url: str,
               prompt: int, max_tokens: int, level: Level) -> None:
    body = {"model": spec.model, "stream": True, "max_tokens": max_tokens,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": _WORD * prompt}]}
    t0 = time.perf_counter()
    first = last = None
    chunks = 0
    usage_tokens = None
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                await resp.read()
                level.fail(f"http_{resp.status}")
                return
            async for payload in SSEData(resp.content):
                data = json.loads(payload)
                if data.get("usage"):
                    usage_tokens = int(data["usage"].get("completion_tokens") or 0)
                if data.get("choices"):
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    last = now
                    chunks += 1
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        level.fail(type(exc).__name__)
        return
    tokens = usage_tokens if usage_tokens is not None else chunks
    level.requests += 1
    level.output_tokens += tokens
    if first is not None:
        level.ttft.append(first - t0)
        if tokens > 1 and last is not None:
            level.tpot.append((last - first) / (tokens - 1))


async def run_level(session: aiohttp.ClientSession, spec: SweepSpec, sizes: Sizes,
                    concurrency: int, seconds: float) -> Level:
    level = Level(concurrency)
    url = chat_url(spec.url)
    t0 = time.perf_counter()
    end = t0 + seconds

    async def worker() -> None:
        while time.perf_counter() < end:
            prompt, max_tokens = sizes.next()
            await _one(session, spec, url, prompt, max_tokens, level)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    # throughput over the time the level really ran (the last requests end after ``end``)
    level.seconds = time.perf_counter() - t0
    return level


def find_knee(levels: list[Level], min_gain: float, max_slowdown: float) -> int | None:
    """The concurrency to recommend (see the module docstring); None before two levels."""
    ok = [lv for lv in levels if lv.requests]
    if len(ok) < 2:
        return ok[0].concurrency if ok else None
    base_tpot = percentile(sorted(ok[0].tpot), 50)
    for here, nxt in itertools.pairwise(ok):
        gain = nxt.tokens_per_s / here.tokens_per_s - 1 if here.tokens_per_s else 0.0
        nxt_tpot = percentile(sorted(nxt.tpot), 50)
        slower = (base_tpot is not None and nxt_tpot is not None
                  and nxt_tpot > max_slowdown * base_tpot)
        if gain < min_gain or slower:
            return here.concurrency
    return ok[-1].concurrency


def _bar(done: float, width: int = 30) -> str:
    filled = int(max(0.0, min(1.0, done)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


async def sweep(spec: SweepSpec) -> dict[str, Any]:
    sizes = Sizes(spec)
    levels: list[Level] = []
    plan = spec.level_list()
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=max(60.0, spec.step_s * 4))
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    # a fresh connection per request: some engines (llama-server) close kept-alive ones
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    stopped = "all levels run"
    async with aiohttp.ClientSession(timeout=timeout, headers=headers,
                                     connector=connector) as session:
        for i, concurrency in enumerate(plan):
            left = spec.time_limit_s - (time.perf_counter() - started)
            if left < spec.step_s / 2:
                stopped = "time limit"
                break
            if spec.progress:
                sys.stderr.write(f"\r{_bar(i / len(plan))} concurrency {concurrency:>4} "
                                 f"({i + 1}/{len(plan)}) {time.perf_counter() - started:6.0f}s")
                sys.stderr.flush()
            levels.append(await run_level(session, spec, sizes, concurrency,
                                          min(spec.step_s, left)))
            knee = find_knee(levels, spec.min_gain, spec.max_slowdown)
            if knee is not None and levels[-1].concurrency > knee:
                stopped = "past the knee"
                break
    if spec.progress:
        sys.stderr.write(f"\r{_bar(1.0)} done in {time.perf_counter() - started:.0f}s "
                         f"({stopped}){' ' * 20}\n")
    knee = find_knee(levels, spec.min_gain, spec.max_slowdown)
    return {"spec": {k: v for k, v in asdict(spec).items() if k not in ("sizes", "api_key")},
            "levels": [lv.figures() for lv in levels], "recommended_max_in_flight": knee,
            "stopped": stopped, "seconds": round(time.perf_counter() - started, 1)}


def config_snippet(result: dict[str, Any], url: str, name: str = "engine") -> str:
    knee = result["recommended_max_in_flight"]
    origin = url.rstrip("/").removesuffix("/v1")
    return "\n".join([
        "upstreams:",
        f"  {name}:",
        f"    url: {origin}",
        f"    max_in_flight: {knee}        # the knee found by the sweep",
        "    # or let llm-throttle track it as load and models change:",
        (f"    # max_in_flight: {max(2, 2 * (knee or 1))}  (ceiling), min_in_flight: 1,"
        " adaptive: true"),
    ])


def table(result: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.1f}"

    lines = [(f"{'conc':>5} {'tok/s':>9} {'req/s':>8} {'TTFT p50':>9} {'p99':>8} "
             f"{'TPOT p50':>9} {'p99':>8} {'failed':>6}")]
    for lv in result["levels"]:
        lines.append(f"{lv['concurrency']:>5} {lv['tokens_per_s']:>9.1f} "
                     f"{lv['requests_per_s']:>8.2f} {ms(lv['ttft_p50_s']):>9} "
                     f"{ms(lv['ttft_p99_s']):>8} {ms(lv['tpot_p50_s']):>9} "
                     f"{ms(lv['tpot_p99_s']):>8} {lv['failed']:>6}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["levels"]
    x = [lv["concurrency"] for lv in levels]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    top.plot(x, [lv["tokens_per_s"] for lv in levels], marker="o")
    top.set_ylabel("output tokens/s")
    for key, label in (("ttft_p50_s", "TTFT p50"), ("ttft_p99_s", "TTFT p99"),
                       ("tpot_p50_s", "TPOT p50"), ("tpot_p99_s", "TPOT p99")):
        bottom.plot(x, [(lv[key] or 0) * 1000 for lv in levels], marker=".", label=label)
    bottom.set_ylabel("ms")
    bottom.set_yscale("log")
    bottom.set_xscale("log", base=2)
    bottom.set_xlabel("concurrency")
    bottom.legend(fontsize="small")
    knee = result["recommended_max_in_flight"]
    if knee:
        for ax in (top, bottom):
            ax.axvline(knee, color="grey", linestyle="--")
    top.set_title(f"sweep: knee at {knee}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="OpenAI-compatible origin or /v1 URL")
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key")
    parser.add_argument("--max-concurrency", type=int, default=64)
    parser.add_argument("--levels", help="comma-separated concurrencies (default 1,2,4,...)")
    parser.add_argument("--step-s", type=float, default=15.0, help="seconds per level")
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds in all")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="lognormal median")
    parser.add_argument("--output-tokens", type=int, default=128, help="lognormal median")
    parser.add_argument("--sigma", type=float, default=0.6, help="lognormal sigma")
    parser.add_argument("--sizes", help="JSONL of {prompt_tokens, max_tokens} pairs")
    parser.add_argument("--min-gain", type=float, default=0.10)
    parser.add_argument("--max-slowdown", type=float, default=2.0)
    parser.add_argument("--plot", default="sweep.png", help="PNG to write ('' for none)")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--no-progress", action="store_true")


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    return SweepSpec(
        url=args.url, model=args.model, api_key=args.api_key,
        max_concurrency=args.max_concurrency, step_s=args.step_s, time_limit_s=args.time_limit,
        prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens, sigma=args.sigma,
        sizes=load_sizes(args.sizes) if args.sizes else [], min_gain=args.min_gain,
        max_slowdown=args.max_slowdown, progress=not args.no_progress,
        levels=[int(x) for x in args.levels.split(",")] if args.levels else [])


def cli_main(args: argparse.Namespace) -> int:
    try:
        spec = spec_from_args(args)
    except (OSError, ValueError, KeyError) as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result = runner.run(sweep(spec))
    print(table(result))
    knee = result["recommended_max_in_flight"]
    if knee is None:
        print("no level completed a request: is the URL right?", file=sys.stderr)
        return 1
    print(f"\nrecommended max_in_flight: {knee}\n\n{config_snippet(result, spec.url)}")
    if args.plot:
        plot(result, Path(args.plot))
        print(f"\nplot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0
