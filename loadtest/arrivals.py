"""The two arrival models of a load run.

*Closed loop*: ``clients`` workers, each sends its next request when the previous one ends
(measures capacity). *Open loop*: Poisson arrivals at ``rate`` per second whatever the server
does (shows queueing and collapse).
"""

from __future__ import annotations

import asyncio
import math

import aiohttp

from .load_request import LoadRun, send_request


async def closed_loop(run: LoadRun, session: aiohttp.ClientSession) -> None:
    spec = run.spec
    # Classes are dealt to workers in proportion to their weights (largest remainder).
    total = sum(c.weight for c in spec.mix)
    quotas = [c.weight / total * spec.clients for c in spec.mix]
    counts = [math.floor(q) for q in quotas]
    for i in sorted(range(len(quotas)), key=lambda i: counts[i] - quotas[i])[
        : spec.clients - sum(counts)
    ]:
        counts[i] += 1
    names = [c.name for c, n in zip(spec.mix, counts, strict=True) for _ in range(n)]

    async def worker(client: str) -> None:
        while run.take():
            await send_request(run, session, client)

    await asyncio.gather(*(worker(name) for name in names))


async def open_loop(run: LoadRun, session: aiohttp.ClientSession) -> None:
    assert run.spec.rate is not None
    tasks: set[asyncio.Task[None]] = set()
    next_at = 0.0
    while True:
        next_at += run.rng.expovariate(run.spec.rate)
        if next_at >= run.deadline:
            break
        delay = next_at - run.now()
        if delay > 0:
            await asyncio.sleep(delay)  # behind schedule: send at once, never skip arrivals
        if not run.take():
            break
        task = asyncio.create_task(send_request(run, session, run.pick_class()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
