"""An upstream standing for a GPU that Hermes Kanban workers use, for ``dispatch-bench``.

A worker (``hermes -p <profile> chat -q "work kanban task <id>"``) finishes its task by calling
the ``kanban_complete`` tool. This server answers the worker's first chat request (it offers that
tool and holds no tool result yet) with the tool call, and the second (with the result) with a
short text, each after the task's own "GPU time" (by the ``x-hermes-task`` header the worker
profile sends). Other chat requests (outside load) take ``x-gpu-seconds`` (default 1 s). Every
answer is streamed the way the ``openai`` SDK parses it when asked to stream.

The server records how many requests it is working on over time (:attr:`AgentGPU.timeline`),
which is what "the GPU was idle" is measured from. The proxy in front of it holds the cap.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

TOOL = "kanban_complete"
GPU_SECONDS_HEADER = "x-gpu-seconds"


def _offers_completion(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """(offers kanban_complete, already holds a tool result)."""
    tools = [t.get("function", {}).get("name") for t in body.get("tools") or []
             if isinstance(t, dict)]
    answered = any(isinstance(m, dict) and m.get("role") == "tool"
                   for m in body.get("messages") or [])
    return TOOL in tools, answered


class AgentGPU:
    """The upstream; ``durations`` maps task id -> seconds per call of that task's worker."""

    def __init__(self, durations: Mapping[str, float] | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.durations: dict[str, float] = dict(durations or {})
        self.clock = clock
        self.in_flight = 0
        #: (time, requests being worked on) at every change
        self.timeline: list[tuple[float, int]] = [(clock(), 0)]
        #: (time, task id or "-", kind) of every chat request answered
        self.answered: list[tuple[float, str, str]] = []
        #: (started, ended, task id or "-", kind) of every chat request worked on
        self.requests: list[tuple[float, float, str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": "qwen", "object": "model", "created": 0, "owned_by": "agent-gpu"}]})

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "not found", "type": "not_found"}},
                                 status=404)

    def _step(self, delta: int) -> None:
        self.in_flight += delta
        self.timeline.append((self.clock(), self.in_flight))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "bad JSON"}}, status=400)
        task = request.headers.get("x-hermes-task", "")
        offers, answered = _offers_completion(body)
        if task in self.durations and offers:
            seconds = self.durations[task]
            kind = "finish" if answered else "complete"
        else:
            seconds = float(request.headers.get(GPU_SECONDS_HEADER, "1"))
            kind = "other"
        self._step(+1)
        began = self.clock()
        try:
            await asyncio.sleep(seconds)
            if kind == "complete":
                call = {"id": f"call_{time.monotonic_ns()}", "type": "function",
                        "function": {"name": TOOL,
                                     "arguments": json.dumps({"summary": "done"})}}
                delta: dict[str, Any] = {"role": "assistant", "tool_calls": [{"index": 0,
                                                                               **call}]}
                message: dict[str, Any] = {"role": "assistant", "content": None,
                                           "tool_calls": [call]}
                finish = "tool_calls"
            else:
                delta = {"role": "assistant", "content": "done"}
                message = {"role": "assistant", "content": "done"}
                finish = "stop"
            self.answered.append((self.clock(), task or "-", kind))
            try:
                return await _answer(request, body, delta, message, finish)
            except ConnectionResetError:  # the worker went away (killed at the end of a run)
                return web.Response(status=499)
        finally:
            self._step(-1)
            self.requests.append((began, self.clock(), task or "-", kind))


async def _answer(request: web.Request, body: Mapping[str, Any], delta: dict[str, Any],
                  message: dict[str, Any], finish: str) -> web.StreamResponse:
    usage = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
    base = {"id": "chatcmpl-gpu", "created": int(time.time()), "model": body.get("model")}
    if not body.get("stream"):
        return web.json_response({**base, "object": "chat.completion", "usage": usage,
                                  "choices": [{"index": 0, "finish_reason": finish,
                                               "message": message}]})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    chunk = {**base, "object": "chat.completion.chunk"}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
    ]
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({**chunk, "choices": [], "usage": usage})
    for event in events:
        await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def idle_slot_seconds(timeline: list[tuple[float, int]], busy_wanted: list[tuple[float, bool]],
                      cap: int, start: float, end: float) -> float:
    """GPU idle while work was waiting: the integral of ``(cap - working) / cap`` over the
    time ``busy_wanted`` says tasks were ready, between ``start`` and ``end`` (seconds)."""
    events = sorted([(t, "gpu", n) for t, n in timeline] +
                    [(t, "ready", int(w)) for t, w in busy_wanted])
    working, wanted, last, total = 0, 0, start, 0.0
    for t, kind, value in events:
        t_clamped = min(max(t, start), end)
        if wanted and t_clamped > last:
            total += (t_clamped - last) * max(cap - working, 0) / cap
        last = max(last, t_clamped)
        if kind == "gpu":
            working = value
        else:
            wanted = value
    if wanted and end > last:
        total += (end - last) * max(cap - working, 0) / cap
    return total
