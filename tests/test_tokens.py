"""Token accounting: reservations, usage parsing, and the SSE usage tap."""

from __future__ import annotations

import json

from proxy.tokens import SSEUsageTap, reservation, usage_from_body


def event(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


CONTENT = event({"choices": [{"delta": {"content": "a"}}]})
USAGE = event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
DONE = b"data: [DONE]\n\n"


def test_reservation_caps_max_tokens_and_skips_completion_for_embeddings():
    assert reservation(400, None, 100, generates=True) == 101 + 100
    assert reservation(400, 5000, 100, generates=True) == 101 + 100
    assert reservation(400, 10, 100, generates=True) == 101 + 10
    assert reservation(400, None, 100, generates=False) == 101


def test_usage_from_plain_body():
    assert usage_from_body(json.dumps({"usage": {"prompt_tokens": 2,
                                                 "completion_tokens": 5}}).encode()) == (2, 5)
    assert usage_from_body(b'{"no": 1}') is None
    assert usage_from_body(b'{"usage": "weird"}') is None


def test_tap_strips_the_usage_chunk_it_asked_for():
    tap = SSEUsageTap(strip_usage=True)
    out = tap.feed(CONTENT + CONTENT + USAGE + DONE)
    assert out == CONTENT + CONTENT + DONE
    assert tap.usage == (7, 3) and tap.chunks == 2


def test_tap_keeps_usage_the_client_asked_for_and_handles_split_events():
    tap = SSEUsageTap(strip_usage=False)
    stream = CONTENT + USAGE + DONE
    out = b"".join(tap.feed(stream[i:i + 5]) for i in range(0, len(stream), 5)) + tap.flush()
    assert out == stream
    assert tap.usage == (7, 3)


def test_tap_passes_complete_events_on_at_once():
    tap = SSEUsageTap(strip_usage=True)
    assert tap.feed(CONTENT + b"data: {\"cho") == CONTENT
    assert tap.feed(b"ices\": []}\n\n") == b'data: {"choices": []}\n\n'


def test_tap_reads_only_real_usage_among_null_usage_events_and_crlf_endings():
    """OpenAI-style streams carry ``"usage": null`` in every chunk; CRLF event ends are kept."""
    null = b'data: {"choices": [{"delta": {"content": "b"}}], "usage": null}\r\n\r\n'
    usage_with_choice = event({"choices": [{"delta": {}}], "usage": {"prompt_tokens": 1,
                                                                      "completion_tokens": 2}})
    tap = SSEUsageTap(strip_usage=True)
    stream = null + CONTENT + null + usage_with_choice + USAGE.replace(b"\n\n", b"\r\n\r\n") + DONE
    out = tap.feed(stream)
    # the usage-only chunk the proxy asked for is gone; one with a choice is a real chunk
    assert out == null + CONTENT + null + usage_with_choice + DONE
    assert tap.usage == (7, 3) and tap.chunks == 4


def test_tap_without_strip_passes_bytes_untouched():
    tap = SSEUsageTap(strip_usage=False)
    stream = CONTENT + USAGE + CONTENT + DONE
    assert tap.feed(stream) == stream
    assert tap.usage == (7, 3) and tap.chunks == 2
