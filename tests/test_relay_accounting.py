"""What a finished exchange is charged and what it tells the capacity controller."""

from __future__ import annotations

import pytest

from proxy.capacity.signals import Outcome
from proxy.forward import RelayOutcome
from proxy.relay_accounting import capacity_outcome, capacity_sample, tokens_used


def test_real_usage_is_charged_over_the_reservation() -> None:
    assert tokens_used(RelayOutcome(status=200, usage=(12, 30), chunks=5), reserved=500) == 42


def test_a_stream_cut_short_is_charged_what_it_generated() -> None:
    """Hazard: charging the whole reservation for a stream the client left after 3 chunks
    (or nothing at all) skews the token bucket and the flow's fair share."""
    assert tokens_used(RelayOutcome(status=200, chunks=3), reserved=500) == 4


@pytest.mark.parametrize("status", [0, 400, 429, 502])
def test_an_answer_that_generated_nothing_charges_nothing(status: int) -> None:
    assert tokens_used(RelayOutcome(status=status), reserved=500) == 0


def test_a_plain_answer_without_usage_keeps_its_reservation() -> None:
    assert tokens_used(RelayOutcome(status=200, complete=True), reserved=77) == 77


@pytest.mark.parametrize(("outcome", "expected"), [
    (RelayOutcome(status=200, complete=True), Outcome.OK),
    (RelayOutcome(status=429), Outcome.OVERLOADED),
    (RelayOutcome(status=503), Outcome.OVERLOADED),
    (RelayOutcome(status=504, failure="upstream_timeout"), Outcome.TIMEOUT),
    (RelayOutcome(status=0, failure="upstream_unavailable"), Outcome.CONNECTION_ERROR),
    (RelayOutcome(status=200, complete=False), Outcome.CONNECTION_ERROR),
    (RelayOutcome(status=200, client_gone=True), Outcome.IGNORED),
    (RelayOutcome(status=404), Outcome.IGNORED),
])
def test_capacity_outcome(outcome: RelayOutcome, expected: Outcome) -> None:
    """Hazard: a client that leaves, or a 4xx, read as the engine's overload would shrink an
    adaptive cap for nothing; a stream broken off mid-way read as OK would grow it."""
    assert capacity_outcome(outcome) is expected


def test_sample_estimates_tokens_when_no_usage_came_back() -> None:
    outcome = RelayOutcome(status=200, complete=True, chunks=11, first_byte_at=10.5)
    sample = capacity_sample(outcome, started=10.0, finished=11.5, body_bytes=400)
    assert sample.outcome is Outcome.OK
    assert sample.prompt_tokens == 100  # 4 bytes a token
    assert sample.ttft_s == pytest.approx(0.5)
    assert sample.tpot_s == pytest.approx(0.1)  # 1 s over the 10 tokens after the first
