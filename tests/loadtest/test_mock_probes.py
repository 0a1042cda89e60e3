"""The probes agents send and the vLLM-style metrics under load."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.loadtest.mock_support import MSG, MockFactory


async def test_probes_and_metrics(make_mock: MockFactory) -> None:
    mock = await make_mock(batch_size=2, ttft_s=0.3, models=["a", "b"])
    async with aiohttp.ClientSession(mock.url) as http:
        for path in ("/api/tags", "/props", "/version", "/health"):
            async with http.get(path) as r:
                assert r.status == 200, path
                data = await r.json()
        async with http.get("/api/tags") as r:
            assert [m["name"] for m in (await r.json())["models"]] == ["a", "b"]
        async with http.get("/props") as r:
            assert (await r.json())["total_slots"] == 2
        assert data == {"status": "ok"}

        body = {"model": "a", "messages": MSG}
        tasks = [asyncio.create_task(http.post("/v1/chat/completions", json=body))
                 for _ in range(3)]
        await mock.state.wait_until(lambda s: s.in_flight == 3)
        async with http.get("/metrics") as r:
            text = await r.text()
        assert 'vllm:num_requests_running{model_name="a"} 2.0' in text
        assert 'vllm:num_requests_waiting{model_name="a"} 1.0' in text
        for t in tasks:
            (await t).release()
