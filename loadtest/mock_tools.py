"""The mock's tool-calling mode: answer a chat that offers a named tool with a call to it.

A Hermes Kanban worker finishes its task only by calling the ``kanban_complete`` tool; a mock
that answers text is recorded as a protocol violation and retried. With the tool named (by
the request header ``x-mock-tool-call: <tool>``, which a Hermes profile can send through
``extra_headers``, or for every request by ``mock-llm --tool-call <tool>``), the first chat
request of a conversation that offers that tool and holds no tool result yet is answered with
one call to it, plain or streamed as the ``openai`` SDK parses it. The worker's next request
carries the tool's result and gets ordinary text: the task is done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

TOOL_CALL_HEADER = "x-mock-tool-call"
KANBAN_COMPLETE = "kanban_complete"


def wanted_tool(body: Mapping[str, Any], headers: Mapping[str, str],
                default: str | None) -> str | None:
    """The tool to call, or None: the request must offer it and carry no tool result yet."""
    name = headers.get(TOOL_CALL_HEADER) or default
    if not name:
        return None
    offered = {t.get("function", {}).get("name") for t in body.get("tools") or []
               if isinstance(t, dict) and isinstance(t.get("function"), dict)}
    answered = any(isinstance(m, dict) and m.get("role") == "tool"
                   for m in body.get("messages") or [])
    return name if name in offered and not answered else None


def _arguments(tool: str, headers: Mapping[str, str]) -> str:
    if tool == KANBAN_COMPLETE:
        task = headers.get("x-hermes-task") or "the task"
        return json.dumps({"summary": f"{task} completed by the mock LLM"})
    return "{}"


async def tool_call_response(request: web.Request, body: Mapping[str, Any], tool: str,
                             response_id: str, usage: dict[str, int],
                             include_usage: bool) -> web.StreamResponse:
    """One assistant message holding one call to ``tool`` (finish_reason ``tool_calls``)."""
    call = {"id": f"call_{response_id}", "type": "function",
            "function": {"name": tool, "arguments": _arguments(tool, request.headers)}}
    base = {"id": response_id, "created": int(time.time()), "model": body.get("model")}
    if body.get("stream") is not True:
        return web.json_response({
            **base, "object": "chat.completion", "usage": usage,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                         "message": {"role": "assistant", "content": None,
                                     "tool_calls": [call]}}],
        })
    chunk = {**base, "object": "chat.completion.chunk"}
    delta = {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **call}]}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    if include_usage:
        events.append({**chunk, "choices": [], "usage": usage})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
                         + b"data: [DONE]\n\n")
    await response.write_eof()
    return response
