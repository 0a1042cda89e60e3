"""Request targets the proxy is willing to forward: no open proxy, no path tricks.

The upstream URL is always ``<configured origin><request path>``; a target that could change
the host or climb out of a path prefix is refused before anything is forwarded: absolute-form
(``GET http://other/``), authority-form (``CONNECT host:443``), scheme-relative (``//host``),
dot segments (``..``, ``%2e%2e``), encoded slashes or backslashes inside a segment, and any
``#`` (a fragment is never sent on the wire; upstreams drop it and route what is left, so
``/v1/chat/completions#x`` would be decided on as one path and served as another).

The proxy decides on the *normalized* path and forwards that same path: percent-escapes of
unreserved characters decoded (``/v1/chat/complet%69ons`` is ``/v1/chat/completions``), other
escapes kept with upper-case hex, ``;params`` kept (never stripped: a path with them is a
different path, and it is admitted like any other).
"""

from __future__ import annotations

from urllib.parse import unquote

from .errors import BadRequest, MethodNotAllowed

REFUSED_METHODS = frozenset({"CONNECT", "TRACE"})
#: RFC 3986 section 2.3: escapes of these decode to the same resource
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")


def normalized_path(path: str) -> str:
    """``path`` with escapes of unreserved characters decoded and other escapes upper-cased
    (RFC 3986 section 6.2.2); a path without ``%`` is returned as is (the common case)."""
    if "%" not in path:
        return path
    parts = path.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        code = part[:2]
        if len(code) == 2 and code[0] in _HEX and code[1] in _HEX:
            byte = int(code, 16)
            out.append(chr(byte) if byte in _UNRESERVED else "%" + code.upper())
            out.append(part[2:])
        else:
            out.append("%" + part)  # a stray '%': kept, the upstream decides (it is no escape)
    return "".join(out)


def checked_target(method: str, raw_target: str) -> str:
    """The normalized path and the query to append to the upstream origin; raises on anything
    unsafe (400 ``invalid_path``, 405 for CONNECT/TRACE)."""
    if method in REFUSED_METHODS:
        raise MethodNotAllowed(f"{method} is not supported by this proxy")
    if not raw_target.startswith("/") or raw_target.startswith("//"):
        raise BadRequest("request target must be a path starting with a single '/'",
                         code="invalid_path")
    if "#" in raw_target:
        raise BadRequest("request target must not contain '#' (a fragment is never sent to a "
                         "server)", code="invalid_path")
    path, sep, query = raw_target.partition("?")
    if "%" in path or "." in path or "\\" in path:
        for segment in path.split("/"):
            decoded = unquote(segment)
            if decoded in (".", "..") or "/" in decoded or "\\" in decoded:
                raise BadRequest("dot segments and encoded slashes are not allowed in the path",
                                 code="invalid_path")
        if "%" in path:
            return normalized_path(path) + sep + query
    return raw_target
