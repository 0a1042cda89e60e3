"""What every run of ``python -m loadtest adaptive`` shares: the cap sampler, per-phase and
per-second figures, the plot of the cap beside goodput and TTFT."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.generator import RequestRecord, percentile


async def cap_sampler(url: str, t0: float, stop: asyncio.Event,
                      out: list[tuple[float, int | None]], upstream: str = "mock") -> None:
    """``(seconds since t0, cap)`` of ``upstream`` every half second until ``stop``."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
        while not stop.is_set():
            cap = None
            try:
                async with session.get(url + "/throttle/status") as r:
                    doc = await r.json()
                cap = doc["upstreams"][upstream]["cap"]
            except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
                pass
            out.append((time.perf_counter() - t0, cap))
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass


def phase_figures(records: list[RequestRecord], start: float, end: float) -> dict[str, Any]:
    inside = [r for r in records if start <= r.start < end]
    ok = [r for r in inside if r.ok]
    ttfts = sorted(r.ttft for r in ok if r.ttft is not None)
    # The engine's part of the TTFT: the client's less the wait in the proxy's queue (its
    # header). With a closed loop the client's TTFT is mostly that wait (clients /
    # throughput), which says little about how full the engine is; this says it.
    engine = sorted(r.ttft - r.queue_wait for r in ok
                    if r.ttft is not None and r.queue_wait is not None)
    return {
        "requests": len(inside),
        "failed": len(inside) - len(ok),
        "goodput_tokens_per_s": sum(r.completion_tokens for r in ok) / max(1e-9, end - start),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "engine_ttft_p50_s": percentile(engine, 50),
        "engine_ttft_p99_s": percentile(engine, 99),
    }


def per_second(records: list[RequestRecord], seconds: float) -> list[dict[str, Any]]:
    out = []
    for s in range(int(seconds)):
        inside = [r for r in records if s <= r.start + r.latency < s + 1 and r.ok]
        ttfts = sorted(r.ttft for r in inside if r.ttft is not None)
        out.append({"t": s, "tokens": sum(r.completion_tokens for r in inside),
                    "ttft_p99": percentile(ttfts, 99)})
    return out


def plot(run: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
    t = [p[0] for p in run["caps"] if p[1] is not None]
    axes[0].step(t, [p[1] for p in run["caps"] if p[1] is not None], where="post")
    axes[0].set_ylabel("cap")
    axes[1].plot([p["t"] for p in run["series"]], [p["tokens"] for p in run["series"]])
    axes[1].set_ylabel("goodput tok/s")
    axes[2].plot([p["t"] for p in run["series"]],
                 [(p["ttft_p99"] or 0) * 1000 for p in run["series"]])
    axes[2].set_ylabel("TTFT p99 ms")
    axes[2].set_xlabel("seconds")
    for ax in axes:
        ax.axvline(run["phase_s"], color="grey", linestyle="--")
    axes[0].set_title(f"{run['experiment']}: {run['target']}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def ms_cell(seconds: float | None, unit: str = "") -> str:
    """Seconds as whole milliseconds for a table cell; "-" when unknown."""
    return "-" if seconds is None else f"{seconds * 1000:.0f}{unit}"


def ratio_cell(after: float | None, before: float | None) -> str:
    """``after`` over ``before`` for a table cell; "-" when either is unknown or zero."""
    return "-" if not after or not before else f"{after / before:.2f}x"


def before_after(before: Mapping[str, Any], after: Mapping[str, Any], key: str,
                 unit: str = "") -> str:
    """One figure of two phases, ``before / after (ratio)``, in milliseconds."""
    return (f"{ms_cell(before[key], unit)} / {ms_cell(after[key], unit)} "
            f"({ratio_cell(after[key], before[key])})")
