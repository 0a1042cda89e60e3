"""The /mock/ routes and the request recording middleware."""

from __future__ import annotations

import aiohttp

from loadtest.mock_llm import MockLLM


async def test_echo_records_headers_and_config(mock: MockLLM) -> None:
    async with aiohttp.ClientSession(mock.url) as http:
        async with http.post(
            "/mock/echo/v1/anything?a=1&a=2", data=b"payload",
            headers={"Authorization": "Bearer upstream"},
        ) as r:
            echo = await r.json()
        async with http.post("/mock/config", json={"output_tokens": 2}) as r:
            assert r.status == 200
        async with http.get("/mock/stats") as r:
            stats = await r.json()
    assert echo["method"] == "POST" and echo["path"] == "/mock/echo/v1/anything"
    assert echo["query"] == {"a": ["1", "2"]} and echo["body"] == "payload"
    assert echo["headers"]["authorization"] == "Bearer upstream"
    assert mock.state.last_request is not None
    assert mock.state.last_request.headers["authorization"] == "Bearer upstream"
    assert stats["recent_requests"][-1]["headers"]["authorization"] == "Bearer upstream"
    assert "/mock/stats" not in stats["requests_by_path"]
    assert mock.config.output_tokens == 2
