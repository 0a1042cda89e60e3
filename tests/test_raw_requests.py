"""Hand-written raw requests against a live proxy: heads too big, bodies too slow or too large,
a trickled head, and targets naming another host (never contacted: not an open proxy).

The fuzzing twin of these is ``tests/test_fuzz.py``; the proxy is ``tests/live_proxy.py``'s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.fuzz_requests import KEY, MAX_BODY
from tests.live_proxy import BODY_TIMEOUT_S, LiveProxy, live_proxy
from tests.raw_client import exchange


@pytest.fixture
def live() -> Iterator[LiveProxy]:
    with live_proxy() as harness:
        yield harness


def _get(target: bytes, *headers: bytes) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: proxy.test",
             b"Authorization: Bearer " + KEY.encode(), *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _post_head(target: bytes, length: int) -> bytes:
    return (b"POST " + target + b" HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer "
            + KEY.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % length)


def test_oversized_header_is_4xx(live: LiveProxy) -> None:
    response = live.run(exchange(live.port, _get(b"/v1/models", b"X-Big: " + b"b" * 20_000)))
    assert response is not None and 400 <= response.status < 500, response
    live.run(live.settle())
    assert live.mock_state.started == 0 and not live.mock_state.requests_by_path


def test_oversized_request_line_is_4xx(live: LiveProxy) -> None:
    response = live.run(exchange(live.port, _get(b"/v1/models?q=" + b"q" * 20_000)))
    assert response is not None and 400 <= response.status < 500, response
    live.run(live.settle())
    assert not live.mock_state.requests_by_path


def test_too_many_headers_is_4xx(live: LiveProxy) -> None:
    many = [b"X-H%d: v" % i for i in range(300)]
    response = live.run(exchange(live.port, _get(b"/v1/models", *many)))
    assert response is not None and 400 <= response.status < 500, response
    live.run(live.settle())
    assert not live.mock_state.requests_by_path


def test_body_sent_slower_than_the_body_timeout_is_408(live: LiveProxy) -> None:
    """A client trickling its body (one byte per 0.1 s) loses it after body_read_timeout_s."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    pieces = [_post_head(b"/v1/chat/completions", len(body))] + [bytes([b]) for b in body]
    started = time.monotonic()
    response = live.run(exchange(live.port, pieces, pause_s=0.1, timeout=5))
    elapsed = time.monotonic() - started
    assert response is not None and response.status == 408, response
    assert json.loads(response.body)["error"]["code"] == "request_timeout"
    assert elapsed < BODY_TIMEOUT_S + 1.0
    live.run(live.settle())
    assert live.mock_state.started == 0


def test_body_that_never_arrives_is_408(live: LiveProxy) -> None:
    """Content-Length promises 100 bytes, none come: 408 after the timeout, nothing held."""
    response = live.run(exchange(live.port, _post_head(b"/v1/chat/completions", 100), timeout=5))
    assert response is not None and response.status == 408, response
    live.run(live.settle())


def test_declared_length_over_the_limit_is_413_before_any_body(live: LiveProxy) -> None:
    """Content-Length of 10 MB, no body sent: 413 at once, not a wait for the body."""
    started = time.monotonic()
    response = live.run(exchange(live.port, _post_head(b"/v1/chat/completions", 10_000_000),
                                 timeout=5))
    assert response is not None and response.status == 413, response
    assert time.monotonic() - started < BODY_TIMEOUT_S
    live.run(live.settle())


def test_chunked_body_over_the_limit_is_413_without_reading_the_rest(live: LiveProxy) -> None:
    """A chunked body that passes the limit and never ends: 413 (not a 408 body timeout)."""
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer "
            + KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (MAX_BODY + 1, b"x" * (MAX_BODY + 1))
    response = live.run(exchange(live.port, head + chunk, timeout=5))
    assert response is not None and response.status == 413, response
    live.run(live.settle())
    assert live.mock_state.started == 0


def test_headers_sent_slower_than_a_header_timeout_are_cut_off() -> None:
    """Slowloris: a head trickled in 2 bytes per 0.1 s is cut off after header_read_timeout_s
    in total (not per byte), with a 408 or a closed connection."""
    with live_proxy({"header_read_timeout_s": 0.5}) as live:
        head = _get(b"/v1/models")
        pieces = [head[i:i + 2] for i in range(0, len(head), 2)]
        started = time.monotonic()
        response = live.run(exchange(live.port, pieces, pause_s=0.1, timeout=10))
        assert response is None or response.status == 408
        assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("request_line", [
    b"GET http://{evil}/v1/models HTTP/1.1",
    b"POST http://{evil}/v1/chat/completions HTTP/1.1",
    b"GET https://{evil}/ HTTP/1.1",
    b"CONNECT {evil} HTTP/1.1",
    b"CONNECT evil.example:443 HTTP/1.1",
    b"GET //{evil}/v1/models HTTP/1.1",
    b"GET http://evil.example/ HTTP/1.1",
    b"OPTIONS * HTTP/1.1",
])
def test_absolute_form_targets_never_reach_another_host(live: LiveProxy,
                                                        request_line: bytes) -> None:
    evil = f"127.0.0.1:{live.evil.port}".encode()
    line = request_line.replace(b"{evil}", evil)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    raw = (line + b"\r\nHost: " + evil + b"\r\nAuthorization: Bearer " + KEY.encode()
           + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    response = live.run(exchange(live.port, raw))
    assert response is not None and 400 <= response.status < 500, response
    live.run(live.settle())  # includes: the evil listener saw no connection
    assert not live.mock_state.requests_by_path  # refused, not rewritten to the upstream


def test_host_header_does_not_pick_the_upstream(live: LiveProxy) -> None:
    """An origin-form request with ``Host: <evil>`` still goes to the configured upstream."""
    evil = f"127.0.0.1:{live.evil.port}".encode()
    raw = (b"GET /v1/models HTTP/1.1\r\nHost: " + evil + b"\r\nAuthorization: Bearer "
           + KEY.encode() + b"\r\n\r\n")
    response = live.run(exchange(live.port, raw))
    assert response is not None and response.status == 200, response
    live.run(live.settle())
    assert live.mock_state.requests_by_path == {"/v1/models": 1}


