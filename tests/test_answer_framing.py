"""The bytes that frame one front-server answer (``proxy/answer_framing.py``), pure functions."""

from __future__ import annotations

import pytest

from proxy.answer_framing import (
    answer_head,
    connection_header,
    encode_headers,
    stream_framing,
    stream_framing_header,
    whole_framing,
)


def test_head_joins_status_headers_framing_connection_date_and_blank_line() -> None:
    head = answer_head(b"HTTP/1.1 200 OK\r\n", [("x-a", "1"), ("x-b", "caf\udce9")],
                       b"Content-Length: 2\r\n", b"Connection: close\r\n", b"Date: D\r\n")
    assert head == (b"HTTP/1.1 200 OK\r\nx-a: 1\r\nx-b: caf\xe9\r\nContent-Length: 2\r\n"
                    b"Connection: close\r\nDate: D\r\n\r\n")
    assert encode_headers(b"x: y\r\n") == b"x: y\r\n"  # pre-encoded headers pass unchanged


@pytest.mark.parametrize(("last", "version", "expected"), [
    (True, "1.1", b"Connection: close\r\n"),
    (True, "1.0", b"Connection: close\r\n"),
    (False, "1.0", b"Connection: keep-alive\r\n"),
    (False, "1.1", b""),
])
def test_connection_header(last: bool, version: str, expected: bytes) -> None:
    """An HTTP/1.0 client closes after each answer unless told to keep alive."""
    assert connection_header(last=last, version=version) == expected


def test_whole_answer_framing() -> None:
    """204/304 carry no length (RFC 9112 6.3); HEAD carries the length of the unsent body."""
    assert whole_framing("GET", 200, 5) == (b"Content-Length: 5\r\n", True)
    assert whole_framing("HEAD", 200, 5) == (b"Content-Length: 5\r\n", False)
    assert whole_framing("GET", 204, 0) == (b"", False)
    assert whole_framing("GET", 304, 7) == (b"", False)


def test_stream_framing() -> None:
    """HTTP/1.0 has no chunked coding: its streamed body ends at the close."""
    assert stream_framing("POST", 200, "1.1") == (True, False)
    assert stream_framing("POST", 200, "1.0") == (False, False)
    assert stream_framing("HEAD", 200, "1.1") == (False, True)
    assert stream_framing("GET", 204, "1.1") == (False, True)
    assert stream_framing_header(True) == b"Transfer-Encoding: chunked\r\n"
    assert stream_framing_header(False) == b""
