"""The time series of a load run: requests done, and (when given) the upstream's vLLM gauges
and the proxy's ``/throttle/status`` queue depth, every ``sample_interval`` seconds."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

import aiohttp

from .load_request import LoadRun


def parse_vllm_gauges(text: str) -> dict[str, float]:
    """Sum of each ``vllm:num_requests_*`` gauge over its label sets."""
    out = {"running": 0.0, "waiting": 0.0}
    for line in text.splitlines():
        for key in out:
            if line.startswith(f"vllm:num_requests_{key}"):
                try:
                    out[key] += float(line.rsplit(None, 1)[-1])
                except ValueError:
                    pass
    return out


def parse_proxy_status(doc: Any) -> dict[str, float | None]:
    """Queue depth and in-flight from ``/throttle/status``; absent fields stay None."""
    if not isinstance(doc, dict):
        return {"queue_depth": None, "proxy_in_flight": None}
    models = doc.get("models") if isinstance(doc.get("models"), dict) else {}
    entries = [m for m in models.values() if isinstance(m, dict)]
    queue = doc.get("queue")
    depth: float | None = None
    if isinstance(queue, dict) and isinstance(queue.get("depth"), (int, float)):
        depth = float(queue["depth"])
    elif any("queued" in m for m in entries):
        depth = float(sum(m.get("queued") or 0 for m in entries))
    in_flight = (
        float(sum(m.get("in_flight") or 0 for m in entries))
        if any("in_flight" in m for m in entries)
        else None
    )
    return {"queue_depth": depth, "proxy_in_flight": in_flight}


async def _scrape(session: aiohttp.ClientSession, url: str) -> tuple[int, str] | None:
    try:
        async with session.get(url) as resp:
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return None


async def take_sample(run: LoadRun, session: aiohttp.ClientSession) -> dict[str, Any]:
    spec = run.spec
    point: dict[str, Any] = {
        "t": round(run.now(), 4),
        "completed": len(run.records),
        "ok": run.ok,
        "in_flight": run.in_flight,
    }
    urls = list(spec.upstream_metrics) + ([spec.proxy_status] if spec.proxy_status else [])
    replies = await asyncio.gather(*(_scrape(session, u) for u in urls))
    if spec.upstream_metrics:
        gauges = [parse_vllm_gauges(r[1]) for r in replies[: len(spec.upstream_metrics)]
                  if r is not None and r[0] == 200]
        if gauges:
            running = sum(g["running"] for g in gauges)
            waiting = sum(g["waiting"] for g in gauges)
            point.update(upstream_running=running, upstream_waiting=waiting,
                         upstream_in_flight=running + waiting)
    if spec.proxy_status:
        reply = replies[-1]
        doc: Any = None
        if reply is not None and reply[0] == 200:
            try:
                doc = json.loads(reply[1])
            except ValueError:
                doc = None
        point.update(parse_proxy_status(doc))
    return point


def progress_line(run: LoadRun, width: int = 30) -> str:
    spec = run.spec
    fractions = []
    if spec.requests:
        fractions.append(len(run.records) / spec.requests)
    if spec.duration:
        fractions.append(min(1.0, run.now() / spec.duration))
    frac = max(fractions) if fractions else 0.0
    filled = int(frac * width)
    errors = len(run.records) - run.ok
    rps = len(run.records) / max(run.now(), 1e-9)
    return (
        f"\r[{'#' * filled}{'.' * (width - filled)}] {len(run.records)} done "
        f"{run.ok} ok {errors} err {run.in_flight} in flight {rps:.1f} req/s "
        f"{run.now():.1f}s"
    )


async def sample_until(run: LoadRun, session: aiohttp.ClientSession, stop: asyncio.Event,
                   on_sample: Callable[[dict[str, Any]], None] | None = None) -> None:
    interval = run.spec.sample_interval
    while True:
        run.series.append(await take_sample(run, session))
        if on_sample is not None:
            on_sample(run.series[-1])
        if run.spec.progress:
            sys.stderr.write(progress_line(run))
            sys.stderr.flush()
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
            return
        except TimeoutError:
            pass
