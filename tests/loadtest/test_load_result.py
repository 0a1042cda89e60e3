"""Records, summaries and streamed tokens by time slot (loadtest.load_result)."""

from __future__ import annotations

import pytest

from loadtest.load_result import (
    STREAM_SLOT_S,
    RequestRecord,
    credit_stream,
    stream_slot,
    streamed_rate,
    streamed_tokens,
    summarize,
)


def test_summary_counts_errors_and_measures_only_successes() -> None:
    records = [
        RequestRecord(0.0, "a", 200, True, 1.0, 0.1, 5, 10, queue_wait=0.25),
        RequestRecord(0.1, "a", 200, True, 3.0, 0.2, 5, 10, queue_wait=0.5),
        RequestRecord(0.2, "b", 429, False, 0.01, error="http_429"),
        RequestRecord(0.3, "b", 0, False, 9.0, error="timeout"),
    ]
    s = summarize(records, 2.0)
    assert (s["count"], s["ok"], s["errors"]) == (4, 2, {"http_429": 1, "timeout": 1})
    assert s["status"] == {"200": 2, "429": 1, "0": 1}
    assert s["goodput_rps"] == 1.0 and s["goodput_tokens_per_s"] == 10.0
    assert s["latency"]["p50"] == 2.0 and s["latency"]["max"] == 3.0  # the timeout is not in it
    assert s["queue_wait"]["max"] == 0.5 and s["service"]["p50"] == pytest.approx(1.625)
    assert s["by_client"]["b"] == {"count": 2, "ok": 0, "latency": s["by_client"]["b"]["latency"],
                                   "ttft": s["by_client"]["b"]["ttft"]}
    assert s["by_client"]["b"]["latency"]["p50"] is None


def test_stream_tokens_land_in_the_slots_their_chunks_arrived_in() -> None:
    """A stream's tokens are spread over the slots its chunks came in, scaled to the usage's
    count (the finish chunk carries none), so the per-slot total equals the tokens reported."""
    streamed: dict[int, float] = {}
    credit_stream(streamed, {stream_slot(0.1): 2, stream_slot(1.2): 2}, tokens=3)
    credit_stream(streamed, {stream_slot(1.3): 1}, tokens=4)
    credit_stream(streamed, {}, tokens=9)  # no chunk: nothing to place
    assert streamed == {0: 1.5, 2: 5.5}
    summary = {"streamed_tokens": streamed_tokens(streamed)}
    assert summary["streamed_tokens"] == {"slot_s": STREAM_SLOT_S, "tokens": [1.5, 0.0, 5.5]}
    assert streamed_rate(summary, 1.0, 1.5) == pytest.approx(5.5 / 0.5)
    assert streamed_tokens({}) is None
