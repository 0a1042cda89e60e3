"""The framing rules of the upstream client: its bounds, its states, what it will not relay.

The transitions between ``Exchange`` states are drawn in ``proxy/upstream_connection.py``.
"""

from __future__ import annotations

import enum

from multidict import CIMultiDict

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
