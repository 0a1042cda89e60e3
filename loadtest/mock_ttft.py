"""The engine's own time to first token, recorded where the engine knows it.

A client's TTFT through the proxy is the proxy's queue, the engine's own queue, the prefill
step and every scheduler delay between them; subtracting the proxy's queue header leaves the
noise of two event loops on a shared host. The mock records, per request, what vLLM records:
from the request's arrival (its body parsed) to its first token, and the part of that spent
waiting for an engine slot (queue mode, ``max_running``). They are exposed as vLLM does, as
the histograms ``vllm:time_to_first_token_seconds`` and ``vllm:request_queue_time_seconds``
on ``/metrics``, and exactly, one sample per request with the requested model (how a
benchmark tells its own requests from another tenant's), on ``GET /mock/ttft``.

The zero-delay fast path (overhead benchmarks: ``ttft_s`` and ``tpot_s`` both 0) records
nothing: it takes no engine step at all.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: samples kept for ``GET /mock/ttft`` (about 10 MB at most)
SAMPLES_KEPT = 100_000

#: upper bounds of the histogram buckets, seconds: vLLM's TTFT buckets below 10 s. vLLM's
#: queue-time histogram starts at 0.3 s; the mock's waits are milliseconds, so both use these.
BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
           7.5, 10.0)


@dataclass(frozen=True, slots=True)
class FirstToken:
    """One request's first token, as the engine saw it."""

    #: wall-clock time (``time.time()``) the request arrived at the engine
    at: float
    #: the model the request asked for
    model: str
    #: arrival to first token, the wait for a slot included
    ttft_s: float
    #: arrival to holding an engine slot (0 without the engine queue)
    queue_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "model": self.model, "ttft_s": self.ttft_s,
                "queue_s": self.queue_s}


def nearest_rank(data: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile of sorted ``data`` (nearest rank; None when empty)."""
    n = len(data)
    return data[min(n - 1, max(0, math.ceil(q / 100 * n) - 1))] if n else None


class Histogram:
    """A cumulative Prometheus histogram (counts since the last :meth:`clear`)."""

    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.counts[i] += 1
                break
        self.total += value
        self.count += 1

    def clear(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.total = 0.0
        self.count = 0

    def lines(self, name: str, help_text: str, label: str) -> list[str]:
        out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, n in zip(BUCKETS, self.counts, strict=True):
            running += n
            out.append(f'{name}_bucket{{le="{bound}",{label}}} {float(running)}')
        out += [f'{name}_bucket{{le="+Inf",{label}}} {float(self.count)}',
                f"{name}_count{{{label}}} {float(self.count)}",
                f"{name}_sum{{{label}}} {self.total}"]
        return out


class FirstTokenLog:
    """Every request's first token: the samples (bounded) and the two histograms."""

    __slots__ = ("samples", "ttft", "queue")

    def __init__(self) -> None:
        self.samples: deque[FirstToken] = deque(maxlen=SAMPLES_KEPT)
        self.ttft = Histogram()
        self.queue = Histogram()

    def add(self, sample: FirstToken) -> None:
        self.samples.append(sample)
        self.ttft.observe(sample.ttft_s)
        self.queue.observe(sample.queue_s)

    def clear(self) -> None:
        self.samples.clear()
        self.ttft.clear()
        self.queue.clear()

    def select(self, since: float | None = None, model: str | None = None) -> list[FirstToken]:
        return [s for s in self.samples
                if (since is None or s.at >= since) and (model is None or s.model == model)]

    def summary(self) -> dict[str, Any]:
        """Per model and for all: count, TTFT p50/p99, queue p99, requests that waited."""
        by_model: dict[str, list[FirstToken]] = {}
        for s in self.samples:
            by_model.setdefault(s.model, []).append(s)
        out = {model: figures(group) for model, group in sorted(by_model.items())}
        out["*"] = figures(self.samples)
        return out

    def metric_lines(self, label: str) -> list[str]:
        return [
            *self.ttft.lines("vllm:time_to_first_token_seconds",
                             "Histogram of time to first token in seconds.", label),
            *self.queue.lines("vllm:request_queue_time_seconds",
                              "Histogram of time spent in WAITING phase for request.", label),
        ]


def figures(samples: Iterable[FirstToken]) -> dict[str, Any]:
    """TTFT and slot-wait percentiles of some samples (seconds; None when empty)."""
    group = list(samples)
    ttft = sorted(s.ttft_s for s in group)
    queue = sorted(s.queue_s for s in group)
    return {
        "count": len(group),
        "ttft_p50_s": nearest_rank(ttft, 50),
        "ttft_p99_s": nearest_rank(ttft, 99),
        "queue_p50_s": nearest_rank(queue, 50),
        "queue_p99_s": nearest_rank(queue, 99),
        # a slot wait of a millisecond or more: the request found every slot taken
        "waited": sum(1 for q in queue if q >= 0.001),
    }
