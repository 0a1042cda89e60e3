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


def test_ndjson_tap_reads_the_done_line_however_it_is_split():
    """Ollama streams NDJSON: bytes go on untouched as they come; the ``done`` line is read
    even when it arrives in pieces."""
    from proxy.families import family_for
    from proxy.tokens import tap_for

    stream = (b'{"message": {"content": "a"}, "done": false}\n'
              b'{"done": true, "prompt_eval_count": 11, "eval_count": 5}\n')
    for size in (1, 7, len(stream)):
        tap = tap_for("application/x-ndjson", family_for("/api/chat").usage, False)
        out = b"".join(tap.feed(stream[i:i + size]) for i in range(0, len(stream), size))
        assert out + tap.flush() == stream
        assert tap.usage == (11, 5) and tap.chunks == 2


def test_other_bodies_are_passed_on_and_read_at_the_end_up_to_a_bound():
    from proxy.families import family_for
    from proxy.tokens import tap_for

    tap = tap_for("application/json", family_for("/v1/chat/completions").usage, False)
    assert tap.feed(b'{"usage": {"prompt_tokens": 2,') == b'{"usage": {"prompt_tokens": 2,'
    assert tap.feed(b' "completion_tokens": 1}}') == b' "completion_tokens": 1}}'
    tap.flush()
    assert tap.usage == (2, 1)
    big = tap_for("application/octet-stream", family_for("/x").usage, False)
    for _ in range(3):
        big.feed(b"x" * (1 << 19))
    big.flush()
    assert big.usage is None  # over the bound: nothing kept, the reservation stands


def test_usage_shapes_and_how_reports_add_up():
    from proxy.usage import UsageTally, read_usage

    assert read_usage({"usage": {"input_tokens": 34, "output_tokens": 16}}).prompt == 34
    assert read_usage({"response": {"usage": {"input_tokens": 3, "output_tokens": 4}}}) \
        is not None
    assert read_usage({"usage": None}) is None and read_usage([]) is None
    assert read_usage({"timings": {"prompt_n": 2, "predicted_n": 3}}).completion == 3
    assert read_usage({"usage": {"total_tokens": 9}}).prompt == 9
    anthropic = UsageTally()
    anthropic.add(read_usage({"message": {"usage": {"input_tokens": 20, "output_tokens": 1}}}))
    anthropic.add(read_usage({"usage": {"output_tokens": 9}}))
    assert anthropic.result == (20, 9)  # cumulative: the last count wins
    n2 = UsageTally()
    for completion in (3, 4):
        n2.add(read_usage({"choices": [], "usage": {"prompt_tokens": 5,
                                                    "completion_tokens": completion}}))
    assert n2.result == (10, 7)  # one usage-only chunk per choice: they add up
    assert UsageTally().result is None
