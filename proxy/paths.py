"""Request targets the proxy is willing to forward: no open proxy, no path tricks.

The upstream URL is always ``<configured origin><request path>``; a target that could change
the host or climb out of a path prefix is refused before anything is forwarded: absolute-form
(``GET http://other/``), authority-form (``CONNECT host:443``), scheme-relative (``//host``),
dot segments (``..``, ``%2e%2e``), and encoded slashes or backslashes inside a segment.
"""

from __future__ import annotations

from urllib.parse import unquote

from .errors import BadRequest, MethodNotAllowed

REFUSED_METHODS = frozenset({"CONNECT", "TRACE"})


def checked_target(method: str, raw_target: str) -> str:
    """The raw path and query to append to the upstream origin; raises on anything unsafe."""
    if method in REFUSED_METHODS:
        raise MethodNotAllowed(f"{method} is not supported by this proxy")
    if not raw_target.startswith("/") or raw_target.startswith("//"):
        raise BadRequest("request target must be a path starting with a single '/'",
                         code="invalid_path")
    path = raw_target.split("?", 1)[0]
    if "%" in path or "." in path or "\\" in path:
        for segment in path.split("/"):
            decoded = unquote(segment)
            if decoded in (".", "..") or "/" in decoded or "\\" in decoded:
                raise BadRequest("dot segments and encoded slashes are not allowed in the path",
                                 code="invalid_path")
    return raw_target
