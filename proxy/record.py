"""One answered request, as a record filled in along its path.

The request path writes what it learns into one ``RequestRecord`` (who, which model, where it
ran, how long it queued, how long the upstream took, what it used); when the answer is done,
metrics (``ProxyMetrics.observe``) and the access log (``proxy/access_log.py``) read that one
record, once. Nothing on the path updates a metric directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from .limits.base import Priority

#: the status recorded for a request whose client left before it was answered (nginx's 499)
CLIENT_GONE = 499


@dataclass(slots=True)
class RequestRecord:
    arrival: float  # proxy clock (monotonic) when the head was handed over
    method: str
    path: str
    client: str = "-"  # the identity label, attribution folded (``AttributionLabels``)
    model: str = "-"
    priority: Priority | None = None
    upstream: str | None = None
    status: int = 0
    admin: bool = False  # an admin route (/metrics, /throttle/status, /healthz)
    queue_s: float | None = None  # waited for admission (admitted requests only)
    upstream_s: float | None = None  # sent upstream -> its response head
    first_byte_at: float | None = None  # proxy clock: first streamed byte to the client
    finished_at: float | None = None  # proxy clock: the answer is done
    tokens: tuple[int, int] | None = None  # (prompt, completion) as the upstream reported
    rejected: str | None = None  # why admission refused (``queue_full``, ...)
    upstream_failure: str | None = None  # connect error, timeout, upstream 429/503

    @property
    def duration_s(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.arrival
