"""The one reply a Hermes Kanban worker needs that the mock LLM does not give (yet).

A dispatched worker (``hermes -p <profile> chat -q "work kanban task <id>"``) finishes its task
only by calling the ``kanban_complete`` tool; a worker that just answers text is recorded as a
protocol violation and retried. :func:`kanban_shim_app` sits in front of the mock: a chat request
offering ``kanban_complete`` and holding no tool result yet gets that tool call back (streamed
the way the ``openai`` SDK parses it); every other request -- the worker's last turn, its GET
probes, and test load with ``x-mock-fault`` -- goes to the mock untouched.

Once the mock answers tool calls itself (request header ``x-mock-tool-call: kanban_complete``,
see :func:`mock_answers_tool_calls`) the end-to-end test talks to it directly.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
from aiohttp import web

TOOL = "kanban_complete"
#: the header a Hermes profile sends (extra_headers) so a tool-calling mock answers with TOOL
TOOL_HEADER = "x-mock-tool-call"
_HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def wants_completion(body: Any) -> bool:
    """The request offers ``kanban_complete`` and the conversation has not called a tool yet."""
    if not isinstance(body, dict):
        return False
    tools = [t.get("function", {}).get("name") for t in body.get("tools") or []
             if isinstance(t, dict)]
    answered = any(isinstance(m, dict) and m.get("role") == "tool"
                   for m in body.get("messages") or [])
    return TOOL in tools and not answered


def _tool_call(task_hint: str) -> dict[str, Any]:
    args = json.dumps({"summary": f"completed by the test LLM ({task_hint})"})
    return {"id": f"call_{time.monotonic_ns()}", "type": "function",
            "function": {"name": TOOL, "arguments": args}}


async def _complete(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    call = _tool_call(request.headers.get("x-hermes-task", "?"))
    usage = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
    base = {"id": "chatcmpl-shim", "created": int(time.time()), "model": body.get("model")}
    if not body.get("stream"):
        return web.json_response({
            **base, "object": "chat.completion", "usage": usage,
            "choices": [{"index": 0, "finish_reason": "tool_calls",
                         "message": {"role": "assistant", "content": None,
                                     "tool_calls": [call]}}],
        })
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    chunk = {**base, "object": "chat.completion.chunk"}
    delta = {"role": "assistant", "tool_calls": [{"index": 0, **call}]}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({**chunk, "choices": [], "usage": usage})
    for event in events:
        await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _handle(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    if request.method == "POST" and request.path.endswith("/chat/completions"):
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if wants_completion(body):
            return await _complete(request, body)
    return await _forward(request, raw)


async def _forward(request: web.Request, raw: bytes) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    url = request.app[UPSTREAM] + request.path_qs
    session = request.app[SESSION]
    async with session.request(request.method, url, headers=headers, data=raw or None) as up:
        resp = web.StreamResponse(status=up.status, headers={
            k: v for k, v in up.headers.items() if k.lower() not in _HOP_BY_HOP})
        await resp.prepare(request)
        async for data in up.content.iter_any():
            await resp.write(data)
        await resp.write_eof()
        return resp


def kanban_shim_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")

    async def session(app: web.Application) -> Any:
        app[SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


async def mock_answers_tool_calls(mock_url: str) -> bool:
    """Whether the mock itself replies with a ``kanban_complete`` call when asked to."""
    body = {
        "model": "qwen", "stream": False,
        "messages": [{"role": "user", "content": "work kanban task t_1"}],
        "tools": [{"type": "function", "function": {"name": TOOL, "parameters": {}}}],
    }
    async with aiohttp.ClientSession() as session, session.post(
        mock_url + "/v1/chat/completions", json=body, headers={TOOL_HEADER: TOOL}
    ) as resp:
        if resp.status != 200:
            return False
        doc = await resp.json(content_type=None)
    try:
        calls = doc["choices"][0]["message"].get("tool_calls") or []
    except (KeyError, IndexError, TypeError, AttributeError):
        return False
    return any(c.get("function", {}).get("name") == TOOL for c in calls)
