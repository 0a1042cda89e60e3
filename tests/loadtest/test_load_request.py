"""The run's request bodies, budget and one request's record (loadtest.load_request)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from loadtest.load_request import QUEUE_WAIT_HEADER, LoadRun, send_request
from loadtest.load_spec import ClientClass, LoadSpec
from loadtest.mock_llm import MockLLM
from tests.loadtest.mock_support import MockFactory


@pytest.fixture
async def queue_reporting_server() -> AsyncIterator[str]:
    """A loopback server that answers like a proxy reporting a 250 ms queue wait."""

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"usage": {"prompt_tokens": 3, "completion_tokens": 2}},
                                 headers={QUEUE_WAIT_HEADER: "250"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def test_bodies_ask_for_usage_only_when_streaming() -> None:
    run = LoadRun(LoadSpec(requests=1, prompt_chars=12, max_tokens=None))
    plain, streamed = json.loads(run.bodies[False]), json.loads(run.bodies[True])
    assert "stream_options" not in plain and "max_tokens" not in plain
    assert streamed["stream_options"] == {"include_usage": True} and streamed["stream"] is True
    assert len(plain["messages"][0]["content"]) == 12


def test_the_budget_and_round_robin() -> None:
    run = LoadRun(LoadSpec(requests=3, base_urls=["http://a/v1", "http://b/v1/"]))
    run.t0, run.deadline = time.perf_counter(), math.inf
    urls = []
    while run.take():
        urls.append(run.next_url())
    assert urls == ["http://b/v1/chat/completions", "http://a/v1/chat/completions",
                    "http://b/v1/chat/completions"]
    run = LoadRun(LoadSpec(duration=1.0))
    run.t0, run.deadline = time.perf_counter() - 2.0, 1.0  # past its duration
    assert not run.take()


def test_the_mix_is_drawn_by_weight() -> None:
    spec = LoadSpec(requests=1, seed=3,
                    mix=[ClientClass("a", "ka", 9.0), ClientClass("b", "kb", 1.0)])
    run = LoadRun(spec)
    picks = [run.pick_class() for _ in range(2000)]
    assert 0.85 < picks.count("a") / len(picks) < 0.95
    assert run.class_headers["b"]["Authorization"] == "Bearer kb"


async def test_a_request_records_the_proxy_queue_wait(queue_reporting_server: str) -> None:
    run = LoadRun(LoadSpec(base_url=queue_reporting_server, requests=1, stream=False))
    run.t0 = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await send_request(run, session, "default")
    [rec] = run.records
    assert rec.ok and rec.status == 200 and rec.queue_wait == 0.25
    assert (rec.prompt_tokens, rec.completion_tokens) == (3, 2)
    assert run.in_flight == 0 and run.ok == 1


async def test_a_stream_is_credited_to_its_time_slots(make_mock: MockFactory) -> None:
    mock: MockLLM = await make_mock(output_tokens=5)
    run = LoadRun(LoadSpec(base_url=mock.url + "/v1", requests=1, max_tokens=5))
    run.t0 = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await send_request(run, session, "default")
    [rec] = run.records
    assert rec.ok and rec.ttft is not None and rec.completion_tokens == 5
    assert sum(run.streamed.values()) == pytest.approx(5)
