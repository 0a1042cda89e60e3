"""The OpenAI wire format as the mock speaks it: error bodies, request parsing, token counts.

Shared by every mock route (``mock_generate``, ``mock_embeddings``, ``mock_probes``); a
malformed request raises :class:`BadRequest`, which each route turns into a 400 with the
OpenAI error shape.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

# Generated text cycles through these; each is exactly one "token" (one SSE chunk).
VOCAB = (
    "Hello", " from", " the", " mock", " model", ".", " It", " streams",
    " one", " token", " per", " chunk", " like", " a", " GPU", " would",
)
VOCAB_JSON = tuple(json.dumps(w).encode() for w in VOCAB)
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
DONE = b"data: [DONE]\n\n"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def error_body(message: str, type_: str, code: str | None) -> bytes:
    return dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


def error_response(
    status: int, message: str, type_: str, code: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    """OpenAI-shaped error response."""
    return web.Response(
        status=status,
        body=error_body(message, type_, code),
        content_type="application/json",
        headers=headers,
    )


class BadRequest(Exception):
    """Raised while parsing; becomes a 400 with the OpenAI error shape."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code

    def response(self) -> web.Response:
        return error_response(400, str(self), "invalid_request_error", self.code)


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json handles
        raise BadRequest("request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", "invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "missing_model")
    return body


def tokens_for_chars(chars: int) -> int:
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


def chat_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be a list", "invalid_messages")
    return tokens_for_chars(
        sum(_text_chars(m.get("content")) for m in messages if isinstance(m, dict))
    )


def completion_prompt_tokens(body: dict[str, Any]) -> int:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return max(1, len(prompt))  # already token ids
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        return max(1, sum(len(p) for p in prompt))
    return tokens_for_chars(_text_chars(prompt))
