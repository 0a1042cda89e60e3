"""The generation routes: chat and text completions, plain or streamed as SSE.

Each request holds the simulated GPU (:class:`loadtest.mock_gpu.ActiveRequest`) for one
time-to-first-token step and one step per further token; faults (``mock_faults``) refuse,
delay, hang or cut it; the tool-calling mode is in ``mock_tools``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from loadtest.mock_faults import Faults, read_request, refusal
from loadtest.mock_gpu import ActiveRequest, check_alive, gpu_step, hold_until_gone
from loadtest.mock_protocol import (
    DONE,
    SSE_HEADERS,
    VOCAB,
    VOCAB_JSON,
    BadRequest,
    chat_prompt_tokens,
    completion_prompt_tokens,
    dumps,
)
from loadtest.mock_state import MOCK_STATE, MockLLMConfig, MockState
from loadtest.mock_tools import tool_call_response, wanted_tool

_DIE_AFTER_CHUNKS = 3


def _output_plan(
    body: dict[str, Any], config: MockLLMConfig, faults: Faults | None
) -> tuple[int, str]:
    """How many tokens to generate and the finish_reason that goes with it."""
    natural = config.output_tokens
    if faults is not None and faults.tokens is not None:
        natural = faults.tokens
    cap = body.get("max_completion_tokens")
    if cap is None:
        cap = body.get("max_tokens")
    if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0 and cap <= natural:
        return cap, "length"
    return max(0, natural), "stop"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def _generate(request: web.Request, *, chat: bool) -> web.StreamResponse:
    state = request.app[MOCK_STATE]
    config = state.config
    try:
        faults, body = await read_request(request)
        prompt_tokens = chat_prompt_tokens(body) if chat else completion_prompt_tokens(body)
        n_tokens, finish_reason = _output_plan(body, config, faults)
    except BadRequest as exc:
        return exc.response()
    if (refused := refusal(faults)) is not None:
        return refused

    model: str = body["model"]
    stream = body.get("stream") is True
    options = body.get("stream_options")
    include_usage = stream and isinstance(options, dict) and bool(options.get("include_usage"))
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": n_tokens,
        "total_tokens": prompt_tokens + n_tokens,
    }
    response_id = f"{'chatcmpl' if chat else 'cmpl'}-mock{state.next_id()}"
    head = (
        f'{{"id":"{response_id}","object":'
        f'"{"chat.completion.chunk" if chat else "text_completion"}",'
        f'"created":{int(time.time())},"model":{json.dumps(model)}'
    )

    tool = wanted_tool(body, request.headers, config.tool_call) if chat else None
    with ActiveRequest(state, model) as active:
        if faults is not None and faults.hang:
            await hold_until_gone(request)
        if tool is not None:  # tool-calling mode (loadtest/mock_tools.py)
            await active.first_step(request, config.ttft_s)
            usage.update(completion_tokens=1, total_tokens=prompt_tokens + 1)
            active.complete(prompt_tokens, 1, "tool_calls")
            return await tool_call_response(request, body, tool, response_id, usage,
                                            include_usage)
        if stream:
            return await _stream(
                request, state, active, faults, chat, head, n_tokens, finish_reason,
                usage if include_usage else None,
            )
        if faults is not None and faults.delay > 0:
            await asyncio.sleep(faults.delay)
            check_alive(request)
        await active.first_step(request, config.ttft_s)
        for _ in range(n_tokens - 1):
            await gpu_step(request, state, config.tpot_s)
        if faults is not None and faults.die_mid_stream:
            active.finish("failed")
            _abort(request)
            return web.Response(status=500)  # never reaches the client
        text = "".join(VOCAB[i % len(VOCAB)] for i in range(n_tokens))
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            obj = "text_completion"
        payload = dumps(
            {
                "id": response_id,
                "object": obj,
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
        )
        active.complete(prompt_tokens, n_tokens, finish_reason)
        return web.Response(body=payload, content_type="application/json")


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _stream(
    request: web.Request,
    state: MockState,
    active: ActiveRequest,
    faults: Faults | None,
    chat: bool,
    head: str,
    n_tokens: int,
    finish_reason: str,
    usage: dict[str, int] | None,
) -> web.StreamResponse:
    """SSE body: one token per chunk, a finish chunk, an optional usage chunk, [DONE]."""
    config = state.config
    choice_head = (head + ',"choices":[{"index":0,').encode()
    if chat:
        first = b'"delta":{"role":"assistant","content":'
        middle = b'"delta":{"content":'
        tail = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        finish = b'"delta":{},"logprobs":null,"finish_reason":"' + finish_reason.encode()
    else:
        first = middle = b'"text":'
        tail = b',"logprobs":null,"finish_reason":null}]}\n\n'
        finish = b'"text":"","logprobs":null,"finish_reason":"' + finish_reason.encode()

    def token_chunk(i: int) -> bytes:
        return b"data: " + choice_head + (first if i == 0 else middle) + VOCAB_JSON[
            i % len(VOCAB_JSON)
        ] + tail

    end = b"data: " + choice_head + finish + b'"}]}\n\n'
    if usage is not None:
        end += b"data: " + (head + ',"choices":[],"usage":').encode() + dumps(usage) + b"}\n\n"
    end += DONE
    prompt_tokens = usage["prompt_tokens"] if usage is not None else 0

    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    if faults is None and config.ttft_s <= 0 and config.tpot_s <= 0:
        # Zero-delay fast path (overhead benchmarks): no sleeps, two writes.
        if n_tokens > 0:
            await response.write(b"".join(token_chunk(i) for i in range(n_tokens)))
        active.complete(prompt_tokens, n_tokens, finish_reason)
        await response.write(end)
        await response.write_eof()
        return response

    if faults is not None and faults.delay > 0:
        await asyncio.sleep(faults.delay)
        check_alive(request)
    await active.first_step(request, config.ttft_s)
    if n_tokens == 0:
        await response.write(b"data: " + choice_head + first + b'""' + tail)
    for i in range(n_tokens):
        if i > 0:
            await gpu_step(request, state, config.tpot_s)
        await response.write(token_chunk(i))
        if faults is not None:
            if i == 0 and faults.pause_after_first > 0:
                await asyncio.sleep(faults.pause_after_first)
                check_alive(request)
            if faults.die_mid_stream and i + 1 >= min(_DIE_AFTER_CHUNKS, n_tokens):
                active.finish("failed")
                _abort(request)
                return response
    active.complete(prompt_tokens, n_tokens, finish_reason)
    await response.write(end)
    if faults is not None and faults.end_after_done > 0:
        await asyncio.sleep(faults.end_after_done)
    await response.write_eof()
    return response
