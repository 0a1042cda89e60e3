"""A GPU-like, OpenAI-compatible LLM server: the proxy's real upstream in tests and load tests.

It speaks exactly what the ``openai`` SDK parses (chat, completions, embeddings, models, SSE
streams with ``stream_options.include_usage``), answers the probes agents send to identify a
server (``/api/tags``, ``/props``, ``/version``, ``/health``), exports vLLM-style ``/metrics``,
and slows down past its batch size (see :mod:`loadtest.mock_state`).

Per-request fault injection, through headers the proxy forwards untouched:

* ``x-mock-tool-call: <tool>`` -- a chat offering that tool, with no tool result yet, gets a
  call to it (``--tool-call`` does it for every request; see :mod:`loadtest.mock_tools`).
* ``x-mock-pause-after-first: <s>`` -- stream: first chunk, pause, then the rest.
* ``x-mock-fault: <f>[,<f>...]`` with ``refuse-429[:<retry s>]``, ``unavailable-503``,
  ``hang`` (never answers until the client leaves), ``die-mid-stream`` (a few chunks, then the
  connection is aborted without ``[DONE]``), ``delay:<s>`` (extra latency before the first
  token), ``tokens:<n>`` (output length; ``max_tokens`` still caps it), ``end-after-done:<s>``
  (stream: the body's terminating chunk comes that long after ``[DONE]``, as from servers that
  send them in separate writes).

Introspection: ``GET /mock/stats``, ``POST /mock/reset``, ``POST /mock/config`` (JSON fields of
:class:`MockLLMConfig`), and ``/mock/echo`` (any method) which returns what it received.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import signal
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from loadtest import mock_engines
from loadtest.mock_state import MockLLMConfig, MockState, RecordedRequest
from loadtest.mock_tools import tool_call_response, wanted_tool

from .runtime import loop_factory

__all__ = [
    "MOCK_STATE",
    "MockLLM",
    "MockLLMConfig",
    "MockState",
    "RecordedRequest",
    "create_app",
    "run_mock_llm",
]

MOCK_STATE = web.AppKey("mock_state", MockState)

# Generated text cycles through these; each is exactly one "token" (one SSE chunk).
_VOCAB = (
    "Hello", " from", " the", " mock", " model", ".", " It", " streams",
    " one", " token", " per", " chunk", " like", " a", " GPU", " would",
)
_VOCAB_JSON = tuple(json.dumps(w).encode() for w in _VOCAB)
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"
_DIE_AFTER_CHUNKS = 3


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _error_body(message: str, type_: str, code: str | None) -> bytes:
    return _dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


def _error(
    status: int, message: str, type_: str, code: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    """OpenAI-shaped error response."""
    return web.Response(
        status=status,
        body=_error_body(message, type_, code),
        content_type="application/json",
        headers=headers,
    )


class _BadRequest(Exception):
    """Raised while parsing; becomes a 400 with the OpenAI error shape."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code

    def response(self) -> web.Response:
        return _error(400, str(self), "invalid_request_error", self.code)


# -- fault injection ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Faults:
    refuse_429: float | None = None
    unavailable: bool = False
    hang: bool = False
    die_mid_stream: bool = False
    delay: float = 0.0
    tokens: int | None = None
    pause_after_first: float = 0.0
    end_after_done: float = 0.0


def _parse_faults(headers: CIMultiDictProxy[str]) -> _Faults | None:
    """None (the fast path) unless the request carries a fault header."""
    spec = headers.get("x-mock-fault")
    pause = headers.get("x-mock-pause-after-first")
    if spec is None and pause is None:
        return None
    faults = _Faults()
    if pause is not None:
        faults.pause_after_first = float(pause)
    for item in (spec or "").split(","):
        name, _, arg = item.strip().partition(":")
        if name == "refuse-429":
            faults.refuse_429 = float(arg) if arg else 1.0
        elif name == "unavailable-503":
            faults.unavailable = True
        elif name == "hang":
            faults.hang = True
        elif name == "die-mid-stream":
            faults.die_mid_stream = True
        elif name == "delay":
            faults.delay = float(arg)
        elif name == "tokens":
            faults.tokens = int(arg)
        elif name == "end-after-done":
            faults.end_after_done = float(arg)
        elif name:
            raise _BadRequest(f"unknown x-mock-fault {name!r}", "unknown_fault")
    return faults


# -- request parsing ---------------------------------------------------------------------------


async def _read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json handles
        raise _BadRequest("request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object", "invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "missing_model")
    return body


def _tokens_for_chars(chars: int) -> int:
    """The mock's tokenizer: about four characters per token, never zero."""
    return max(1, (chars + 3) // 4)


def _text_chars(value: Any) -> int:
    """Characters of text in a prompt, message content or content-part list."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    if isinstance(value, dict):
        return _text_chars(value.get("text") or value.get("content") or "")
    return 0


def _chat_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _BadRequest("'messages' must be a list", "invalid_messages")
    return _tokens_for_chars(
        sum(_text_chars(m.get("content")) for m in messages if isinstance(m, dict))
    )


def _completion_prompt_tokens(body: dict[str, Any]) -> int:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return max(1, len(prompt))  # already token ids
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        return max(1, sum(len(p) for p in prompt))
    return _tokens_for_chars(_text_chars(prompt))


def _output_plan(
    body: dict[str, Any], config: MockLLMConfig, faults: _Faults | None
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


# -- the GPU -----------------------------------------------------------------------------------


def _check_alive(request: web.Request) -> None:
    """Raise if the client went away; covers servers that do not cancel handlers."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("client disconnected")


async def _step(request: web.Request, state: MockState, base_s: float) -> None:
    """One GPU step: ``base_s`` stretched by the load at this moment."""
    if base_s > 0:
        await asyncio.sleep(base_s * state.slowdown())
        _check_alive(request)


async def _hang(request: web.Request) -> None:
    """Hold the request until the client leaves (or the handler is cancelled)."""
    while True:
        await asyncio.sleep(0.02)
        _check_alive(request)


class _Active:
    """One request's hold on the GPU; released exactly once."""

    __slots__ = ("state", "model", "open", "started_at")

    def __init__(self, state: MockState, model: str) -> None:
        self.state = state
        self.model = model
        self.open = True
        self.started_at = time.perf_counter()
        state.begin(model)

    def finish(self, outcome: str) -> None:
        if self.open:
            self.open = False
            self.state.end(self.model, outcome, time.perf_counter() - self.started_at)


# -- generation routes -------------------------------------------------------------------------


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def _generate(request: web.Request, *, chat: bool) -> web.StreamResponse:
    state = request.app[MOCK_STATE]
    config = state.config
    try:
        faults = _parse_faults(request.headers)
        body = await _read_json(request)
        prompt_tokens = _chat_prompt_tokens(body) if chat else _completion_prompt_tokens(body)
        n_tokens, finish_reason = _output_plan(body, config, faults)
    except _BadRequest as exc:
        return exc.response()
    except ValueError as exc:
        return _error(400, f"bad x-mock header: {exc}", "invalid_request_error", "bad_fault")
    if faults is not None:
        if faults.refuse_429 is not None:
            return _error(
                429,
                "Rate limit reached (mock)",
                "rate_limit_error",
                "rate_limit_exceeded",
                {
                    "retry-after": str(max(1, math.ceil(faults.refuse_429))),
                    "retry-after-ms": str(int(faults.refuse_429 * 1000)),
                },
            )
        if faults.unavailable:
            return _error(503, "Service unavailable (mock)", "server_error", "unavailable")

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
    active = _Active(state, model)
    try:
        if faults is not None and faults.hang:
            await _hang(request)
        if tool is not None:  # tool-calling mode (loadtest/mock_tools.py)
            await _step(request, state, config.ttft_s)
            usage.update(completion_tokens=1, total_tokens=prompt_tokens + 1)
            _account(state, active, prompt_tokens, 1, "tool_calls")
            return await tool_call_response(request, body, tool, response_id, usage,
                                            include_usage)
        if stream:
            return await _stream(
                request, state, active, faults, chat, head, n_tokens, finish_reason,
                usage if include_usage else None,
            )
        if faults is not None and faults.delay > 0:
            await asyncio.sleep(faults.delay)
            _check_alive(request)
        await _step(request, state, config.ttft_s)
        for _ in range(n_tokens - 1):
            await _step(request, state, config.tpot_s)
        if faults is not None and faults.die_mid_stream:
            active.finish("failed")
            _abort(request)
            return web.Response(status=500)  # never reaches the client
        text = "".join(_VOCAB[i % len(_VOCAB)] for i in range(n_tokens))
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
        payload = _dumps(
            {
                "id": response_id,
                "object": obj,
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
        )
        _account(state, active, prompt_tokens, n_tokens, finish_reason)
        return web.Response(body=payload, content_type="application/json")
    except (asyncio.CancelledError, ConnectionResetError):
        active.finish("cancelled")
        raise
    finally:
        active.finish("failed")


def _account(
    state: MockState, active: _Active, prompt_tokens: int, n_tokens: int, finish_reason: str
) -> None:
    """Count a finished request; called before its last bytes go out."""
    state.prompt_tokens += prompt_tokens
    state.completion_tokens += n_tokens
    state.finished_by_reason[finish_reason] += 1
    active.finish("completed")


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _stream(
    request: web.Request,
    state: MockState,
    active: _Active,
    faults: _Faults | None,
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
        return b"data: " + choice_head + (first if i == 0 else middle) + _VOCAB_JSON[
            i % len(_VOCAB_JSON)
        ] + tail

    end = b"data: " + choice_head + finish + b'"}]}\n\n'
    if usage is not None:
        end += b"data: " + (head + ',"choices":[],"usage":').encode() + _dumps(usage) + b"}\n\n"
    end += _DONE
    prompt_tokens = usage["prompt_tokens"] if usage is not None else 0

    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    if faults is None and config.ttft_s <= 0 and config.tpot_s <= 0:
        # Zero-delay fast path (overhead benchmarks): no sleeps, two writes.
        if n_tokens > 0:
            await response.write(b"".join(token_chunk(i) for i in range(n_tokens)))
        _account(state, active, prompt_tokens, n_tokens, finish_reason)
        await response.write(end)
        await response.write_eof()
        return response

    if faults is not None and faults.delay > 0:
        await asyncio.sleep(faults.delay)
        _check_alive(request)
    await _step(request, state, config.ttft_s)
    if n_tokens == 0:
        await response.write(b"data: " + choice_head + first + b'""' + tail)
    for i in range(n_tokens):
        if i > 0:
            await _step(request, state, config.tpot_s)
        await response.write(token_chunk(i))
        if faults is not None:
            if i == 0 and faults.pause_after_first > 0:
                await asyncio.sleep(faults.pause_after_first)
                _check_alive(request)
            if faults.die_mid_stream and i + 1 >= min(_DIE_AFTER_CHUNKS, n_tokens):
                active.finish("failed")
                _abort(request)
                return response
    _account(state, active, prompt_tokens, n_tokens, finish_reason)
    await response.write(end)
    if faults is not None and faults.end_after_done > 0:
        await asyncio.sleep(faults.end_after_done)
    await response.write_eof()
    return response


# -- embeddings --------------------------------------------------------------------------------


def _embedding(text: str, dim: int) -> list[float]:
    """Deterministic unit vector derived from the text."""
    raw = hashlib.shake_256(text.encode("utf-8", "surrogatepass")).digest(2 * dim)
    vec = [(raw[2 * i] << 8 | raw[2 * i + 1]) / 32767.5 - 1.0 for i in range(dim)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return [json.dumps(value)]
        if all(isinstance(v, (str, list)) for v in value):
            return [v if isinstance(v, str) else json.dumps(v) for v in value]
    raise _BadRequest("'input' must be a string, a list of strings or token ids", "invalid_input")


async def _embeddings(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    config = state.config
    try:
        faults = _parse_faults(request.headers)
        body = await _read_json(request)
        inputs = _embedding_inputs(body.get("input"))
    except _BadRequest as exc:
        return exc.response()
    except ValueError as exc:
        return _error(400, f"bad x-mock header: {exc}", "invalid_request_error", "bad_fault")
    if faults is not None and faults.refuse_429 is not None:
        return _error(429, "Rate limit reached (mock)", "rate_limit_error", "rate_limit_exceeded",
                      {"retry-after": str(max(1, math.ceil(faults.refuse_429)))})
    if faults is not None and faults.unavailable:
        return _error(503, "Service unavailable (mock)", "server_error", "unavailable")
    model: str = body["model"]
    base64_out = body.get("encoding_format") == "base64"
    dim = body.get("dimensions") or config.embedding_dim
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= 65536:
        return _error(400, "dimensions must be a positive integer", "invalid_request_error",
                      "invalid_value")
    active = _Active(state, model)
    try:
        if faults is not None and faults.delay > 0:
            await asyncio.sleep(faults.delay)
        await _step(request, state, config.ttft_s)
        data = []
        for i, text in enumerate(inputs):
            vec = _embedding(text, dim)
            emb: Any = (
                base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if base64_out else vec
            )
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(_tokens_for_chars(len(t)) for t in inputs)
        payload = _dumps(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
        state.prompt_tokens += tokens
        active.finish("completed")
        return web.Response(body=payload, content_type="application/json")
    except (asyncio.CancelledError, ConnectionResetError):
        active.finish("cancelled")
        raise
    finally:
        active.finish("failed")


# -- probes and metrics ------------------------------------------------------------------------


async def _models(request: web.Request) -> web.Response:
    models = request.app[MOCK_STATE].config.models
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "mock"} for m in models]
    return web.json_response({"object": "list", "data": data})


async def _model(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    if model not in request.app[MOCK_STATE].config.models:
        return _error(404, f"The model '{model}' does not exist", "invalid_request_error",
                      "model_not_found")
    return web.json_response({"id": model, "object": "model", "created": 0, "owned_by": "mock"})


async def _ollama_tags(request: web.Request) -> web.Response:
    models = request.app[MOCK_STATE].config.models
    return web.json_response(
        {
            "models": [
                {
                    "name": m,
                    "model": m,
                    "modified_at": "2024-01-01T00:00:00Z",
                    "size": 0,
                    "digest": hashlib.sha256(m.encode()).hexdigest(),
                    "details": {"format": "gguf", "family": "mock", "parameter_size": "0B",
                                "quantization_level": "F16"},
                }
                for m in models
            ]
        }
    )


async def _llamacpp_props(request: web.Request) -> web.Response:
    config = request.app[MOCK_STATE].config
    return web.json_response(
        {
            "default_generation_settings": {"n_ctx": 4096, "n_predict": config.output_tokens,
                                            "model": config.models[0] if config.models else ""},
            "total_slots": config.batch_size,
            "model_path": f"/models/{config.models[0] if config.models else 'mock'}.gguf",
            "chat_template": "",
            "build_info": "mock-llm",
        }
    )


async def _version(request: web.Request) -> web.Response:
    return web.json_response({"version": "0.0.0-mock"})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _metrics_text(state: MockState) -> str:
    """vLLM-style exposition; the aggregate series carry the first served model's name."""
    config = state.config
    label = f'model_name="{config.models[0] if config.models else "mock-model"}"'
    running = min(state.in_flight, config.batch_size)
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{label}}} {float(running)}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{label}}} {float(state.waiting)}",
        *mock_engines.vllm_kv_lines(state, label),
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{label}}} {float(state.prompt_tokens)}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{label}}} {float(state.completion_tokens)}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
    ]
    for reason in ("length", "stop"):
        count = float(state.finished_by_reason.get(reason, 0))
        lines.append(f'vllm:request_success_total{{finished_reason="{reason}",{label}}} {count}')
    lines += [
        "# HELP mock_requests_in_flight Inference requests active now, by requested model.",
        "# TYPE mock_requests_in_flight gauge",
        f"mock_requests_in_flight {float(state.in_flight)}",
    ]
    for model, n in sorted(state.in_flight_by_model.items()):
        lines.append(f'mock_requests_in_flight{{model="{model}"}} {float(n)}')
    lines += [
        "# HELP mock_peak_in_flight Highest in-flight count since the last reset.",
        "# TYPE mock_peak_in_flight gauge",
        f"mock_peak_in_flight {float(state.peak)}",
        "# HELP mock_requests_total Requests received, by path.",
        "# TYPE mock_requests_total counter",
    ]
    for path, n in sorted(state.requests_by_path.items()):
        lines.append(f'mock_requests_total{{path="{path}"}} {float(n)}')
    return "\n".join(lines) + "\n"


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    if state.config.engine == "ollama":
        return mock_engines.not_found()
    text = (mock_engines.llamacpp_metrics_text(state) if state.config.engine == "llamacpp"
            else _metrics_text(state))
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def _slots(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    if state.config.engine != "llamacpp":
        return mock_engines.not_found()
    return web.json_response(mock_engines.llamacpp_slots(state))


async def _ollama_ps(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    if state.config.engine != "ollama":
        return mock_engines.not_found()
    return web.json_response(mock_engines.ollama_ps(state))


# -- introspection -----------------------------------------------------------------------------


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[MOCK_STATE].snapshot())


async def _reset(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    state.reset()
    return web.json_response(state.snapshot())


async def _set_config(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    try:
        values = json.loads(await request.read() or b"{}")
        if not isinstance(values, dict):
            raise TypeError("expected a JSON object")
        state.config.update(values)
    except KeyError as exc:
        return _error(400, f"unknown config field {exc}", "invalid_request_error", "bad_config")
    except (ValueError, TypeError) as exc:
        return _error(400, str(exc), "invalid_request_error", "bad_config")
    return web.json_response(state.config.to_dict())


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query_string": request.query_string,
            "query": {k: request.query.getall(k) for k in request.query},
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body.decode("utf-8", errors="replace"),
        }
    )


@web.middleware
async def _record(request: web.Request, handler: Any) -> web.StreamResponse:
    """Count every request by path and keep its headers (introspection routes excluded)."""
    path = request.path
    if not path.startswith("/mock/") or path.startswith("/mock/echo"):
        request.app[MOCK_STATE].record(request.method, path, request.headers)
    response: web.StreamResponse = await handler(request)
    return response


def create_app(
    config: MockLLMConfig | None = None, state: MockState | None = None
) -> web.Application:
    """The mock as an aiohttp app; pass ``state`` to keep counters across restarts."""
    if state is None:
        state = MockState(config or MockLLMConfig())
    elif config is not None:
        state.config = config
    app = web.Application(middlewares=[_record], client_max_size=64 * 1024 * 1024)
    app[MOCK_STATE] = state
    add = app.router.add_route
    add("POST", "/v1/chat/completions", _chat_completions)
    add("POST", "/v1/completions", _completions)
    add("POST", "/v1/embeddings", _embeddings)
    add("GET", "/v1/models", _models)
    add("GET", "/v1/models/{model:.+}", _model)
    add("GET", "/api/tags", _ollama_tags)
    add("GET", "/props", _llamacpp_props)
    add("GET", "/version", _version)
    add("GET", "/health", _health)
    add("GET", "/metrics", _metrics)
    add("GET", "/slots", _slots)
    add("GET", "/api/ps", _ollama_ps)
    add("GET", "/mock/stats", _stats)
    add("POST", "/mock/reset", _reset)
    add("POST", "/mock/config", _set_config)
    add("*", "/mock/echo", _echo)
    add("*", "/mock/echo/{tail:.*}", _echo)
    return app


# -- running it --------------------------------------------------------------------------------


class MockLLM:
    """A running mock server; ``stop()``/``start()`` simulate an upstream going away."""

    def __init__(
        self, config: MockLLMConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.state = MockState(config or MockLLMConfig())
        self.host = host
        self.port = port
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None

    @property
    def config(self) -> MockLLMConfig:
        return self.state.config

    @property
    def url(self) -> str:
        """Origin, e.g. ``http://127.0.0.1:8000``; append ``/v1`` for an SDK base_url."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen; on a restart the same port and the same counters are reused."""
        if self._runner is not None:
            return
        self.app = create_app(state=self.state)
        # handler_cancellation: a client that leaves frees its in-flight slot at once.
        runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=0.25
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        """Close the listener and every open connection (in-flight requests are cut)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


@asynccontextmanager
async def run_mock_llm(
    config: MockLLMConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[MockLLM]:
    """Run the mock in this event loop for the duration of the block."""
    server = MockLLM(config, host, port)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# -- command line ------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = MockLLMConfig()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--batch", type=int, default=defaults.batch_size,
                        help="requests served at full speed")
    parser.add_argument("--ttft", type=float, default=defaults.ttft_s, help="seconds")
    parser.add_argument("--tpot", type=float, default=defaults.tpot_s, help="seconds per token")
    parser.add_argument("--output-tokens", type=int, default=defaults.output_tokens)
    parser.add_argument("--thrash", type=float, default=defaults.thrash)
    parser.add_argument("--embedding-dim", type=int, default=defaults.embedding_dim)
    parser.add_argument("--models", default=",".join(defaults.models),
                        help="comma-separated ids for /v1/models")
    parser.add_argument("--engine", default=defaults.engine, choices=mock_engines.ENGINES,
                        help="introspection format (/metrics, /slots, /api/ps)")
    parser.add_argument("--tool-call", default=defaults.tool_call, metavar="TOOL",
                        help="answer a chat offering TOOL (and no tool result yet) with a call "
                             "to it, e.g. kanban_complete: plays a Hermes task to done")


def config_from_args(args: argparse.Namespace) -> MockLLMConfig:
    return MockLLMConfig(
        batch_size=args.batch,
        ttft_s=args.ttft,
        tpot_s=args.tpot,
        output_tokens=args.output_tokens,
        thrash=args.thrash,
        embedding_dim=args.embedding_dim,
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        engine=args.engine,
        tool_call=args.tool_call or None,
    )


async def _serve(config: MockLLMConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with run_mock_llm(config, host, port) as server:
        print(f"mock-llm listening on {server.url}", flush=True)
        await stop.wait()


def cli_main(args: argparse.Namespace) -> int:
    """``python -m loadtest mock-llm``: serve until SIGINT/SIGTERM (uvloop when available)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(config_from_args(args), args.host, args.port))
    return 0
