"""What one finished request tells the capacity controller, and how a window of them reads.

Two latency signals separate load from request size:

- time per output token (TPOT): the gap between the first and the last token divided by the
  tokens in between; batch saturation and thrashing show here, and an answer twice as long
  does not look twice as slow;
- time to first token (TTFT) per prompt size: queueing inside the engine shows here first;
  divided by ``1 + prompt_tokens / PREFILL_REF_TOKENS`` so a long prompt (longer prefill)
  does not look like overload.

A plain (non-streamed) answer has no first token to time: its whole latency per output token
stands in for TPOT, and it gives no TTFT. Latencies are measured from the moment the proxy
sends the request upstream, never including the proxy's own queue.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

#: prompt tokens that add roughly one no-load TTFT of prefill (normalisation only)
PREFILL_REF_TOKENS = 512


class Outcome(enum.Enum):
    """How a request ended, as far as capacity is concerned."""

    OK = "ok"
    OVERLOADED = "overloaded"  # upstream answered 429 or 503
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    IGNORED = "ignored"  # client gone, 4xx: says nothing about the engine

    @property
    def is_error(self) -> bool:
        return self in (Outcome.OVERLOADED, Outcome.TIMEOUT, Outcome.CONNECTION_ERROR)


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished request, as the controller sees it."""

    outcome: Outcome
    started_at: float  # clock time the request went upstream
    ttft_s: float | None = None  # None: not streamed, or no token came
    tpot_s: float | None = None  # per output token (see the module docstring)
    prompt_tokens: int = 0

    @property
    def ttft_norm(self) -> float | None:
        if self.ttft_s is None:
            return None
        return self.ttft_s / (1.0 + self.prompt_tokens / PREFILL_REF_TOKENS)


def make_sample(outcome: Outcome, started_at: float, finished_at: float,
                first_token_at: float | None, prompt_tokens: int,
                completion_tokens: int) -> Sample:
    """Build a sample from timestamps and token counts (counts may be estimates)."""
    if outcome is not Outcome.OK:
        return Sample(outcome, started_at)
    ttft = None if first_token_at is None else max(0.0, first_token_at - started_at)
    tpot = None
    if first_token_at is not None and completion_tokens > 1:
        tpot = max(0.0, finished_at - first_token_at) / (completion_tokens - 1)
    elif first_token_at is None and completion_tokens > 0:
        tpot = max(0.0, finished_at - started_at) / completion_tokens
    return Sample(outcome, started_at, ttft, tpot, max(0, prompt_tokens))


def median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


@dataclass(frozen=True, slots=True)
class WindowStats:
    """The medians of one window of OK samples, and how many errors it held."""

    samples: int
    errors: int
    tpot_s: float | None
    ttft_s: float | None  # normalised

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> WindowStats:
        ok = [s for s in samples if s.outcome is Outcome.OK]
        return cls(
            samples=len(ok),
            errors=sum(1 for s in samples if s.outcome.is_error),
            tpot_s=median([s.tpot_s for s in ok if s.tpot_s is not None]),
            ttft_s=median([t for s in ok if (t := s.ttft_norm) is not None]),
        )
