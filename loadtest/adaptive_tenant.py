"""The ``tenant`` experiment's own figures: the engine's TTFT as the engine recorded it.

Our load asks for ``mock-model`` through the proxy; the other tenant asks for
``TENANT_MODEL`` straight at the mock, so the mock's per-request record (``GET /mock/ttft``,
``loadtest/mock_ttft.py``) tells the two apart. Per phase: the engine's TTFT p50/p99 and
slot waits for our requests, the tenant's and all of them; the mock's peak of requests in
flight before the tenant came (above the cap, the proxy let more through than it should).
"""

from __future__ import annotations

import statistics
from typing import Any

import aiohttp

from loadtest.adaptive_common import before_after, ms_cell
from loadtest.mock_ttft import FirstToken, figures

OUR_MODEL = "mock-model"
TENANT_MODEL = "tenant-model"


async def mock_json(url: str, path: str) -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session, \
            session.get(url + path) as response:
        response.raise_for_status()
        return await response.json()


async def engine_samples(mock_url: str) -> list[FirstToken]:
    doc = await mock_json(mock_url, "/mock/ttft")
    return [FirstToken(**s) for s in doc["samples"]]


def engine_figures(samples: list[FirstToken], wall0: float, start: float,
                   end: float) -> dict[str, Any]:
    """Ours, the tenant's and all, of the requests that arrived in ``[start, end)`` seconds
    after ``wall0``."""
    inside = [s for s in samples if start <= s.at - wall0 < end]
    return {
        "ours": figures(s for s in inside if s.model == OUR_MODEL),
        "tenant": figures(s for s in inside if s.model == TENANT_MODEL),
        "all": figures(inside),
    }


def cap_trace(caps: list[tuple[float, int | None]], phase: float,
              settle: float) -> dict[str, Any]:
    """The cap's median before the tenant, its range and median after, and its changes."""
    def window(lo: float, hi: float) -> list[int]:
        return [c for t, c in caps if lo <= t < hi and c is not None]

    before, after = window(settle, phase), window(phase + settle, 2 * phase)
    changes = [(round(t, 1), c) for i, (t, c) in enumerate(caps)
               if c is not None and (i == 0 or caps[i - 1][1] != c)]
    return {
        "before_median": statistics.median_low(before) if before else None,
        "after_median": statistics.median_low(after) if after else None,
        "after_range": [min(after), max(after)] if after else None,
        "changes": changes,
    }


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Two tables per tenant run: the engine's record, then the clients' view and the cap."""
    runs = {n: r for n, r in results.items() if r.get("engine_before")}
    if not runs:
        return []
    lines = ["", ("| run | engine TTFT p50 ours, ms before / after | p99 ours | p50 all "
                  "| p99 all | tenant's p50 / p99 | slot waits ours before / after |"),
             "|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        b, a = run["engine_before"], run["engine_after"]
        lines.append(
            f"| {name} | {before_after(b['ours'], a['ours'], 'ttft_p50_s')} "
            f"| {before_after(b['ours'], a['ours'], 'ttft_p99_s')} "
            f"| {before_after(b['all'], a['all'], 'ttft_p50_s')} "
            f"| {before_after(b['all'], a['all'], 'ttft_p99_s')} "
            f"| {ms_cell(a['tenant']['ttft_p50_s'])} / {ms_cell(a['tenant']['ttft_p99_s'])} "
            f"| {b['ours']['waited']}/{b['ours']['count']} / "
            f"{a['ours']['waited']}/{a['ours']['count']} |")
    lines += ["", ("| run | client TTFT p99 before / after, ms | our goodput before / after "
                   "tok/s | tenant requests | cap before / after (range) | mock peak in "
                   "flight before | lost |"), "|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        b, a, cap = run["before"], run["after"], run["cap_trace"]
        lines.append(
            f"| {name} | {before_after(b, a, 'ttft_p99_s')} "
            f"| {b['goodput_tokens_per_s']:.0f} / {a['goodput_tokens_per_s']:.0f} "
            f"| {run['tenant_requests']} | {cap['before_median']} / {cap['after_median']} "
            f"({cap['after_range']}) | {run['mock_peak_before']} | {run['lost']} |")
    return lines
