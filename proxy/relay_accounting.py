"""What one relayed exchange is charged, and what it tells the capacity controller.

Both read the ``RelayOutcome`` the forwarder wrote (``proxy/forward.py``) once the request
has ended, whatever way it ended; neither has side effects, so the request path
(``proxy/app.py``) stays the one place that releases and records.
"""

from __future__ import annotations

from .capacity.signals import Outcome, Sample, make_sample
from .errors import UpstreamTimeout
from .forward import RelayOutcome


def tokens_used(outcome: RelayOutcome, reserved: int) -> int:
    """Real usage when known; what a cut-short stream generated; else the reservation."""
    if outcome.usage is not None:
        return outcome.usage[0] + outcome.usage[1]
    if outcome.status == 0 or outcome.status >= 400:
        return 0  # nothing was generated
    if outcome.chunks:
        return outcome.chunks + 1
    return reserved


def capacity_outcome(outcome: RelayOutcome) -> Outcome:
    """How the exchange ended as far as the upstream's capacity is concerned."""
    if outcome.failure == UpstreamTimeout.code:
        return Outcome.TIMEOUT
    if outcome.failure is not None and outcome.status == 0:
        return Outcome.CONNECTION_ERROR  # no answer at all
    if outcome.client_gone:
        return Outcome.IGNORED
    if outcome.status in (429, 503):
        return Outcome.OVERLOADED
    if outcome.status >= 400 or outcome.status == 0:
        return Outcome.IGNORED
    if not outcome.complete:
        return Outcome.CONNECTION_ERROR  # the upstream broke off mid-stream
    return Outcome.OK


def capacity_sample(outcome: RelayOutcome, started: float, finished: float,
                    body_bytes: int) -> Sample:
    """The sample for adaptive caps; token counts are estimated when no usage came back."""
    if outcome.usage is not None:
        prompt, completion = outcome.usage
    else:
        prompt, completion = body_bytes // 4, outcome.chunks
    return make_sample(capacity_outcome(outcome), started, finished, outcome.first_byte_at,
                       prompt, completion)
