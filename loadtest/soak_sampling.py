"""What the soak samples while it runs (the proxy's RSS, descriptors, CPU and
``/throttle/status``) and reads after it (permits still held, tracebacks in the log).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.processes import Service
from loadtest.soak_requests import MODEL


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS (KiB) and open file descriptors of a live process; empty when it is gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_kib"] = int(line.split()[1])
        out["fds"] = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        pass
    return out


def held_permits(doc: dict[str, Any]) -> dict[str, float]:
    """Nonzero in-flight and queued counts of a ``/throttle/status`` document, by resource."""
    held: dict[str, float] = {}
    for group in ("models", "upstreams", "gpus", "clients", "attributed"):
        for name, entry in (doc.get(group) or {}).items():
            if entry.get("in_flight"):
                held[f"{group}.{name}.in_flight"] = entry["in_flight"]
            if entry.get("queued"):
                held[f"{group}.{name}.queued"] = entry["queued"]
    depth = (doc.get("queue") or {}).get("depth")
    if depth:
        held["queue"] = depth
    return held


async def read_status(session: aiohttp.ClientSession, base: str) -> dict[str, Any] | None:
    try:
        async with session.get(base + "/throttle/status") as response:
            if response.status == 200:
                doc: dict[str, Any] = await response.json()
                return doc
    except (aiohttp.ClientError, TimeoutError, ValueError):
        pass
    return None


async def sample(session: aiohttp.ClientSession, proxy: Service, t0: float,
                  done: Counter[str]) -> dict[str, Any]:
    sample: dict[str, Any] = {"t": round(time.monotonic() - t0, 2), "done": done.total(),
                              **_proc_status(proxy.pid), "cpu_s": round(proxy.cpu_seconds(), 2)}
    doc = await read_status(session, proxy.url)
    if doc is not None:
        model = (doc.get("models") or {}).get(MODEL, {})
        sample.update(in_flight=model.get("in_flight"),
                      queue_depth=(doc.get("queue") or {}).get("depth"))
    return sample


def log_errors(log: str) -> dict[str, int]:
    """Tracebacks in a log, counted by the message logged with them and their last line."""
    found: Counter[str] = Counter()
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("Traceback"):
            continue
        message = lines[i - 1].split(" ", 2)[-1] if i else ""
        end = next((row for row in lines[i + 1:] if row and not row[0].isspace()), "?")
        found[f"{message} -> {end}"[:200]] += 1
    return dict(found.most_common())
