"""The framing rules of the upstream client: its bounds, its states, what it will not relay.

The transitions between ``Exchange`` states are drawn in ``proxy/upstream_connection.py``.
"""

from __future__ import annotations

import enum

from multidict import CIMultiDict

from .messages import NO_BODY_STATUS

#: like the front server's limits on a request head
MAX_HEAD_BYTES = 65536
MAX_HEADERS = 128
#: interim (1xx) answers tolerated before the final one
MAX_INTERIM = 8


def framing_doubt(version: str, headers: CIMultiDict[str]) -> str | None:
    """What llhttp accepts but the proxy will not relay, as h11 refuses it too: another
    HTTP version, or a transfer coding other than one ``chunked`` (a body in a coding the
    client would never be told of)."""
    if version != "1.1" and version != "1.0":
        return f"an HTTP/{version} response"
    if "Transfer-Encoding" in headers:
        codings = headers.getall("Transfer-Encoding")
        if len(codings) > 1 or codings[0].strip().lower() != "chunked":
            return f"Transfer-Encoding {', '.join(codings)!r} (only chunked is relayed)"
    return None


class Exchange(enum.Enum):
    """Where a connection is in its current request/response exchange."""

    IDLE = "idle"  # no request out (new or pooled): any byte from the upstream closes it
    AWAITING = "awaiting"  # request written, final head not yet in
    INTERIM = "interim"  # inside a 1xx answer (skipped)
    BODY = "body"  # final head in, body arriving
    DONE = "done"  # final message complete: nothing more may arrive
    CLOSED = "closed"


class Framing(enum.Enum):
    """How the body of a final answer was delimited (a pooled connection remembers its last)."""

    NONE = "none"  # no body: 204, 304, the answer to HEAD
    LENGTH = "length"  # Content-Length
    CHUNKED = "chunked"
    CLOSE = "close"  # by the connection closing: never pooled


def body_framing(status: int, headers: CIMultiDict[str], head_only: bool) -> Framing:
    """How the body of a final answer is delimited (RFC 9112 section 6.3): none for the
    statuses that never carry one and after HEAD, else chunked before a length, else the
    connection's close."""
    if head_only or status in NO_BODY_STATUS:
        return Framing.NONE
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return Framing.CHUNKED
    if "Content-Length" in headers:
        return Framing.LENGTH
    return Framing.CLOSE


def announces_forbidden_body(status: int, headers: CIMultiDict[str]) -> bool:
    """A 204 announcing a body (RFC 9110 section 8.6 forbids it): if those bytes come, they
    come after the message, so the connection is not reused."""
    return status == 204 and ("Transfer-Encoding" in headers
                              or headers.get("Content-Length", "0") != "0")
