"""How the front server frames one answer on the wire (HTTP/1.x, RFC 9112 section 6).

Pure functions of the request's method and version and the answer's status and size: the
connection (``proxy/connection.py``) decides *when* an answer is the last on its connection
and writes the bytes; this module says *which* bytes: the head, its framing header
(``Content-Length`` or ``Transfer-Encoding: chunked``) and its ``Connection`` header.
"""

from __future__ import annotations

from collections.abc import Iterable

from .messages import NO_BODY_STATUS

#: a whole answer's head and body go out in one write below this body size (one copy is
#: cheaper than two sends); above it, in two (no copy of a large body)
ONE_WRITE_MAX = 65536

_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"


def encode_headers(headers: bytes | Iterable[tuple[str, str]]) -> bytes:
    """Header lines as bytes; already encoded headers pass as they are."""
    if isinstance(headers, bytes):
        return headers
    return "".join([f"{name}: {value}\r\n" for name, value in headers]).encode(
        "utf-8", "surrogateescape")


def connection_header(*, last: bool, version: str) -> bytes:
    """``close`` on the connection's last answer; HTTP/1.0 must be told to keep alive."""
    if last:
        return _CLOSE
    if version == "1.0":
        return _KEEP_ALIVE
    return b""


def answer_head(status_line: bytes, headers: bytes | Iterable[tuple[str, str]],
                framing: bytes, connection: bytes, date_line: bytes) -> bytes:
    """The whole head of an answer, blank line included."""
    return b"".join((status_line, encode_headers(headers), framing, connection, date_line,
                     b"\r\n"))


def whole_framing(method: str, status: int, body_size: int) -> tuple[bytes, bool]:
    """(framing header, whether the body is sent) of an answer written in one piece.

    204 and 304 carry neither a body nor a length; a HEAD answer carries the length of the
    body it does not send.
    """
    if status in NO_BODY_STATUS:
        return b"", False
    return b"Content-Length: %d\r\n" % body_size, method != "HEAD"


def stream_framing(method: str, status: int, version: str) -> tuple[bool, bool]:
    """(chunked, silent) of a streamed answer: silent sends no body at all (HEAD, 204,
    304); HTTP/1.0 has no chunked coding, so its body ends when the connection does."""
    silent = method == "HEAD" or status in NO_BODY_STATUS
    return (not silent and version != "1.0"), silent


def stream_framing_header(chunked: bool) -> bytes:
    return _CHUNKED if chunked else b""
