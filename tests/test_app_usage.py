"""Per route family: what is settled (the upstream's real usage) and how streams are relayed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.raw_upstream import RawUpstream, Reply, Seen, replies


def sse(*events: Any, named: bool = False) -> list[bytes]:
    out = []
    for obj in events:
        if isinstance(obj, bytes):
            out.append(obj)
            continue
        head = f"event: {obj['type']}\n".encode() if named else b""
        out.append(head + b"data: " + json.dumps(obj).encode() + b"\n\n")
    return out


def ndjson(*lines: Any) -> list[bytes]:
    return [json.dumps(line).encode() + b"\n" for line in lines]


RESPONSES_USAGE = {"input_tokens": 34, "output_tokens": 16, "total_tokens": 50}
LLAMA_FINAL = {"content": "", "stop": True, "tokens_evaluated": 12, "tokens_predicted": 7,
               "timings": {"prompt_n": 12, "predicted_n": 7}}

#: path, request body, the upstream's reply, the (prompt, completion) to settle
CASES: dict[str, tuple[str, dict[str, Any], Reply, tuple[int, int]]] = {
    "responses": ("/v1/responses", {"model": "m", "input": "hi", "max_output_tokens": 20},
                  Reply.json({"object": "response", "usage": RESPONSES_USAGE}), (34, 16)),
    "responses-stream": (
        "/v1/responses", {"model": "m", "input": "hi", "stream": True},
        Reply(content_type="text/event-stream", parts=sse(
            {"type": "response.created", "response": {"usage": None}},
            {"type": "response.output_text.delta", "delta": "a"},
            {"type": "response.completed", "response": {"usage": RESPONSES_USAGE}},
            named=True)),
        (34, 16)),
    "llamacpp-completion": ("/completion", {"prompt": "hi", "n_predict": 8},
                            Reply.json({"content": "ok", **LLAMA_FINAL}), (12, 7)),
    "llamacpp-native-completions": ("/completions", {"prompt": "hi"},
                                    Reply.json({"content": "ok", **LLAMA_FINAL}), (12, 7)),
    "llamacpp-completion-stream": (
        "/completion", {"prompt": "hi", "stream": True},
        Reply(content_type="text/event-stream", parts=sse(
            {"content": "a", "stop": False}, {"content": "b", "stop": False}, LLAMA_FINAL)),
        (12, 7)),
    "anthropic": ("/v1/messages", {"model": "m", "max_tokens": 9, "messages": []},
                  Reply.json({"type": "message", "usage": {"input_tokens": 20,
                                                           "output_tokens": 9}}), (20, 9)),
    "anthropic-stream": (
        "/v1/messages", {"model": "m", "max_tokens": 9, "messages": [], "stream": True},
        Reply(content_type="text/event-stream", parts=sse(
            {"type": "message_start", "message": {"usage": {"input_tokens": 20,
                                                            "output_tokens": 1}}},
            {"type": "content_block_delta", "delta": {"text": "a"}},
            {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 9}},
            {"type": "message_stop"}, named=True)),
        (20, 9)),
    "ollama-chat-default-stream": (
        "/api/chat", {"model": "m", "messages": [], "options": {"num_predict": 5}},
        Reply(content_type="application/x-ndjson", parts=ndjson(
            {"message": {"content": "a"}, "done": False},
            {"message": {"content": ""}, "done": True, "prompt_eval_count": 11,
             "eval_count": 5})),
        (11, 5)),
    "ollama-generate-plain": ("/api/generate", {"model": "m", "prompt": "hi", "stream": False},
                              Reply.json({"response": "ok", "done": True,
                                          "prompt_eval_count": 11, "eval_count": 4}), (11, 4)),
    "openai-stream-n2": (
        "/v1/chat/completions", {"model": "m", "messages": [], "n": 2, "stream": True},
        Reply(content_type="text/event-stream", parts=sse(
            {"choices": [{"index": 0, "delta": {"content": "a"}}]},
            {"choices": [{"index": 1, "delta": {"content": "b"}}]},
            {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}},
            {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4}},
            b"data: [DONE]\n\n")),
        (10, 7)),
    "chunked-json": ("/v1/chat/completions", {"model": "m", "messages": []},
                     Reply(parts=[b'{"choices": [], ',
                                  b'"usage": {"prompt_tokens": 2, "completion_tokens": 1}}']),
                     (2, 1)),
}


def settled(proxy: Any) -> tuple[int, int]:
    """The tokens the proxy counted (llm_throttle_tokens_total), prompt and completion."""
    totals = {"prompt": 0, "completion": 0}
    for (_, _, kind), child in proxy.proxy.metrics.tokens.children.items():
        totals[kind] += int(child.value)
    return totals["prompt"], totals["completion"]


@pytest.mark.parametrize("case", list(CASES))
async def test_each_family_is_settled_with_its_real_usage(make_proxy, case):
    """Hazard: only OpenAI's ``usage.prompt_tokens`` was read: ``/v1/responses`` counted 50/0
    plain and 0/0 streamed, llama.cpp native 0/0, and a streamed ``n=2`` only its last usage
    chunk; the TPM bucket was then settled with the wrong count."""
    path, body, reply, want = CASES[case]
    async with RawUpstream(replies(lambda seen: reply)) as upstream:
        models = {"m": {"upstreams": ["up"], "tokens_per_minute": 100000},
                  "*": {"upstreams": ["up"]}}
        proxy = await make_proxy({"upstreams": {"up": {"url": upstream.url}}, "models": models})
        async with aiohttp.ClientSession() as session, \
                session.post(proxy.url + path, json=body) as response:
            assert response.status == 200
            await response.read()
        assert settled(proxy) == want


def test_the_reservation_reads_each_familys_completion_cap():
    """Hazard: ``n_predict`` / ``options.num_predict`` / ``max_output_tokens`` were not read:
    every such request reserved the model's whole ``max_tokens_estimate``."""
    from proxy.families import family_for
    from proxy.parse import parse_body

    def cap(path: str, body: dict[str, Any]) -> int | None:
        return parse_body(family_for(path), json.dumps(body).encode()).max_tokens

    assert cap("/completion", {"n_predict": 16}) == 16
    assert cap("/completion", {"n_predict": -1}) is None  # "until done": the model cap
    assert cap("/api/generate", {"model": "m", "options": {"num_predict": 7}}) == 7
    assert cap("/v1/responses", {"model": "m", "max_output_tokens": 9}) == 9
    assert cap("/v1/messages", {"model": "m", "max_tokens": 3}) == 3
    assert cap("/v1/chat/completions", {"model": "m", "max_tokens": 9,
                                        "max_completion_tokens": 4}) == 4
    n3 = parse_body(family_for("/v1/chat/completions"), b'{"model": "m", "n": 3}')
    assert n3.choices == 3  # each of the 3 choices may reach the cap: 3x reserved
    from proxy.tokens import reservation
    assert reservation(40, 10, 100, True, n3.choices) == 11 + 30
    assert parse_body(family_for("/api/chat"), b'{"model": "m"}').stream  # Ollama's default
    assert not parse_body(family_for("/api/chat"), b'{"model": "m", "stream": false}').stream


async def test_the_hidden_usage_chunk_keeps_what_else_it_carries(make_proxy):
    """Hazard: the proxy asks for ``include_usage`` and hides that chunk again; llama.cpp puts
    ``timings`` in it, and they vanished. Now only the usage goes."""
    timings = {"prompt_n": 5, "predicted_n": 3, "predicted_per_second": 50.0}
    reply = Reply(content_type="text/event-stream", parts=sse(
        {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3},
         "timings": timings},
        b"data: [DONE]\n\n"))
    async with RawUpstream(replies(lambda seen: reply)) as upstream:
        proxy = await make_proxy({"upstreams": {"up": {"url": upstream.url}},
                                  "models": {"m": {"upstreams": ["up"]}}})
        async with aiohttp.ClientSession() as session, session.post(
                proxy.url + "/v1/chat/completions",
                json={"model": "m", "messages": [], "stream": True}) as r:
            text = (await r.read()).decode()
        assert upstream.seen[0].json()["stream_options"] == {"include_usage": True}
        events = [json.loads(line[6:]) for line in text.split("\n")
                  if line.startswith("data: {")]
        assert [e.get("timings") for e in events] == [None, timings]
        assert all("usage" not in e for e in events)
        assert settled(proxy) == (5, 3)


@pytest.mark.parametrize(("path", "content_type", "first", "rest"), [
    ("/api/chat", "application/x-ndjson", b'{"done": false}\n', b'{"done": true}\n'),
    ("/v1/audio/speech", "audio/mpeg", b"ID3-first-bytes", b"more-bytes"),
    ("/v1/messages", "text/event-stream", b"event: ping\ndata: {}\n\n", b"data: {}\n\n"),
])
async def test_a_streamed_body_is_relayed_as_it_arrives(make_proxy, path, content_type, first,
                                                        rest):
    """Hazard: an admitted answer that was not SSE-for-a-stream-request (Ollama's NDJSON, a
    chunked audio body) was read whole before the first byte went to the client. The upstream
    here sends the rest only once the client has the first part."""
    gate = asyncio.Event()

    def reply(seen: Seen) -> Reply:
        return Reply(content_type=content_type, parts=[first, rest], gate=gate)

    async with RawUpstream(replies(reply)) as upstream:
        proxy = await make_proxy({"upstreams": {"up": {"url": upstream.url}},
                                  "models": {"m": {"upstreams": ["up"]}}})
        async with aiohttp.ClientSession() as session, \
                session.post(proxy.url + path, json={"model": "m", "stream": True}) as r:
            got = await asyncio.wait_for(r.content.readexactly(len(first)), 5)
            gate.set()
            got += await asyncio.wait_for(r.content.read(), 5)
        assert got == first + rest
