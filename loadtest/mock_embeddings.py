"""``POST /v1/embeddings``: deterministic unit vectors, float lists or base64."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import struct
from typing import Any

from aiohttp import web

from loadtest.mock_faults import read_request, refusal
from loadtest.mock_gpu import ActiveRequest
from loadtest.mock_protocol import (
    BadRequest,
    dumps,
    error_response,
    tokens_for_chars,
)
from loadtest.mock_state import MOCK_STATE


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
    raise BadRequest("'input' must be a string, a list of strings or token ids", "invalid_input")


async def embeddings(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    config = state.config
    try:
        faults, body = await read_request(request)
        inputs = _embedding_inputs(body.get("input"))
    except BadRequest as exc:
        return exc.response()
    if (refused := refusal(faults)) is not None:
        return refused
    model: str = body["model"]
    base64_out = body.get("encoding_format") == "base64"
    dim = body.get("dimensions") or config.embedding_dim
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= 65536:
        return error_response(400, "dimensions must be a positive integer",
                              "invalid_request_error", "invalid_value")
    with ActiveRequest(state, model) as active:
        if faults is not None and faults.delay > 0:
            await asyncio.sleep(faults.delay)
        await active.first_step(request, config.ttft_s)
        data = []
        for i, text in enumerate(inputs):
            vec = _embedding(text, dim)
            emb: Any = (
                base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if base64_out else vec
            )
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(tokens_for_chars(len(t)) for t in inputs)
        payload = dumps(
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
