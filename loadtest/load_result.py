"""What a load run measured: one record per request, the summary, and streamed tokens by
time slot.

Percentiles are of successful requests only. A stream's completion tokens are counted in the
``STREAM_SLOT_S`` slots its chunks arrived in, so a window of the run (``streamed_rate``) counts
the tokens that arrived in it, not whole requests that started in it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: width of the time slots streamed tokens are counted in (``summary["streamed_tokens"]``)
STREAM_SLOT_S = 0.5


@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it; times in seconds from the start of the run."""

    start: float
    client: str
    status: int = 0  # 0: no HTTP response (connection error, timeout before headers)
    ok: bool = False
    latency: float = 0.0
    ttft: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    #: seconds queued at the proxy, from its QUEUE_WAIT_HEADER (None when not reported)
    queue_wait: float | None = None


@dataclass
class LoadResult:
    spec: dict[str, Any]
    records: list[RequestRecord]
    series: list[dict[str, Any]]
    summary: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.spec.get("label") or "",
            "spec": self.spec,
            "summary": self.summary,
            "series": self.series,
            "records": [asdict(r) for r in self.records],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def distribution(values: Iterable[float]) -> dict[str, float | None]:
    data = sorted(values)
    return {
        "p50": percentile(data, 50),
        "p90": percentile(data, 90),
        "p99": percentile(data, 99),
        "max": data[-1] if data else None,
        "mean": sum(data) / len(data) if data else None,
    }


def summarize(records: Sequence[RequestRecord], elapsed: float) -> dict[str, Any]:
    """Counts, throughput, goodput and latency/TTFT percentiles (of successful requests)."""
    ok = [r for r in records if r.ok]
    errors = Counter(r.error or f"http_{r.status}" for r in records if not r.ok)
    elapsed = max(elapsed, 1e-9)
    good_tokens = sum(r.completion_tokens for r in ok)
    summary: dict[str, Any] = {
        "count": len(records),
        "ok": len(ok),
        "errors": dict(errors),
        "status": dict(Counter(str(r.status) for r in records)),
        "elapsed_s": elapsed,
        "throughput_rps": len(records) / elapsed,
        "goodput_rps": len(ok) / elapsed,
        "goodput_tokens_per_s": good_tokens / elapsed,
        "completion_tokens": good_tokens,
        "latency": distribution(r.latency for r in ok),
        "ttft": distribution(r.ttft for r in ok if r.ttft is not None),
    }
    waited = [r for r in ok if r.queue_wait is not None]
    if waited:
        summary["queue_wait"] = distribution(r.queue_wait or 0.0 for r in waited)
        summary["service"] = distribution(r.latency - (r.queue_wait or 0.0) for r in waited)
    classes = sorted({r.client for r in records})
    if len(classes) > 1:
        summary["by_client"] = {
            name: {
                "count": sum(1 for r in records if r.client == name),
                "ok": sum(1 for r in ok if r.client == name),
                "latency": distribution(r.latency for r in ok if r.client == name),
                "ttft": distribution(
                    r.ttft for r in ok if r.client == name and r.ttft is not None
                ),
            }
            for name in classes
        }
    return summary


# -- streamed tokens by time slot ------------------------------------------------------------


def stream_slot(t: float) -> int:
    """The ``STREAM_SLOT_S`` slot that ``t`` seconds into the run falls in."""
    return int(t / STREAM_SLOT_S)


def credit_stream(streamed: dict[int, float], slots: Mapping[int, int], tokens: int) -> None:
    """Add one finished stream's ``tokens`` to the run's per-slot counts, spread over the slots
    its chunks arrived in (scaled to the usage's count: a finish chunk carries none)."""
    chunks = sum(slots.values())
    if chunks:
        scale = tokens / chunks
        for slot, count in slots.items():
            streamed[slot] = streamed.get(slot, 0.0) + count * scale


def streamed_tokens(streamed: Mapping[int, float]) -> dict[str, Any] | None:
    """The summary's ``streamed_tokens``: tokens per slot from the run's start (None: none)."""
    if not streamed:
        return None
    last = max(streamed)
    return {"slot_s": STREAM_SLOT_S,
            "tokens": [round(streamed.get(i, 0.0), 1) for i in range(last + 1)]}


def streamed_rate(summary: dict[str, Any], start_s: float, end_s: float) -> float | None:
    """Completion tokens a second that arrived between ``start_s`` and ``end_s`` of the run
    (whole slots; None when the run has no per-slot counts: not streamed, or older results)."""
    streamed = summary.get("streamed_tokens")
    if not streamed or end_s <= start_s:
        return None
    slot = float(streamed["slot_s"])
    first, last = math.ceil(start_s / slot - 1e-9), math.floor(end_s / slot + 1e-9)
    tokens = streamed["tokens"][first:last]
    return sum(tokens) / max((last - first) * slot, 1e-9)
