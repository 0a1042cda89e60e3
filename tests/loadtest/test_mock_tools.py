"""The mock's tool-calling mode plays a Hermes Kanban task to done, through the proxy."""

from __future__ import annotations

import json

import pytest

from loadtest.mock_tools import KANBAN_COMPLETE, TOOL_CALL_HEADER
from tests.conftest import one_model_config

TOOLS = [{"type": "function", "function": {
    "name": KANBAN_COMPLETE, "description": "finish the task",
    "parameters": {"type": "object", "properties": {"summary": {"type": "string"}}}}}]
FIRST = [{"role": "user", "content": "work kanban task t_1"}]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("by", ["header", "mode"])
async def test_worker_conversation_ends_with_the_tool_call_then_text(
        mock_llm, make_proxy, openai_client, stream, by):
    """Hazard: the mock only ever answered text, so following docs/hermes.md with the
    project's own mock no Hermes task could reach done (kanban_complete never called)."""
    mock = await mock_llm(ttft_s=0, tpot_s=0, output_tokens=3,
                          tool_call=KANBAN_COMPLETE if by == "mode" else None)
    proxy = await make_proxy(one_model_config(mock.url))
    headers = {TOOL_CALL_HEADER: KANBAN_COMPLETE, "x-hermes-task": "t_1"} if by == "header" \
        else {}
    client = openai_client(proxy.url, default_headers=headers)

    if stream:
        calls: dict[int, dict] = {}
        finish, usage = None, None
        async for chunk in await client.chat.completions.create(
                model="m", messages=FIRST, tools=TOOLS, stream=True,
                stream_options={"include_usage": True}):
            usage = chunk.usage or usage
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for call in choice.delta.tool_calls or ():
                    entry = calls.setdefault(call.index, {"id": call.id, "name": "", "args": ""})
                    entry["name"] += call.function.name or ""
                    entry["args"] += call.function.arguments or ""
        (call,) = calls.values()
        call_id, name, args = call["id"], call["name"], call["args"]
        assert usage is not None and usage.completion_tokens == 1
    else:
        answer = await client.chat.completions.create(model="m", messages=FIRST, tools=TOOLS)
        finish = answer.choices[0].finish_reason
        (tool_call,) = answer.choices[0].message.tool_calls
        call_id, name, args = tool_call.id, tool_call.function.name, tool_call.function.arguments
    assert finish == "tool_calls" and name == KANBAN_COMPLETE
    assert "completed by the mock LLM" in json.loads(args)["summary"]

    # the worker's next turn carries the tool result: ordinary text, the conversation ends
    second = [*FIRST,
              {"role": "assistant", "content": None, "tool_calls": [
                  {"id": call_id, "type": "function",
                   "function": {"name": name, "arguments": args}}]},
              {"role": "tool", "tool_call_id": call_id, "content": '{"ok": true}'}]
    final = await client.chat.completions.create(model="m", messages=second, tools=TOOLS)
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content
    assert not final.choices[0].message.tool_calls


async def test_without_the_tool_offered_or_named_the_mock_answers_text(mock_llm, openai_client):
    """Hazard: tool mode must not turn ordinary load-test chats into tool calls."""
    mock = await mock_llm(ttft_s=0, tpot_s=0, tool_call=KANBAN_COMPLETE)
    client = openai_client(mock.url)
    plain = await client.chat.completions.create(model="m", messages=FIRST)
    assert plain.choices[0].message.content and not plain.choices[0].message.tool_calls
    other = [{"type": "function", "function": {"name": "web_search", "parameters": {}}}]
    answer = await client.chat.completions.create(model="m", messages=FIRST, tools=other)
    assert not answer.choices[0].message.tool_calls
    assert mock.state.in_flight == 0
