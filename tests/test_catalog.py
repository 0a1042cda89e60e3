"""``GET /v1/models``: the configured models and every upstream's list, merged and cached."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from loadtest.processes import free_port


def _fleet_config(url_a: str, url_b: str) -> dict:
    return {
        "upstreams": {"a": {"url": url_a}, "b": {"url": url_b},
                      "dead": {"url": f"http://127.0.0.1:{free_port()}",
                               "connect_timeout_s": 1}},
        "models": {"qwen": {"upstreams": ["a"]}, "*": {"upstreams": ["a", "b"]}},
    }


async def test_models_lists_every_upstream_and_the_configured_ones(mock_llm, make_proxy,
                                                                   openai_client):
    """Hazard: /v1/models was passed to the first upstream only, so the second upstream's
    models were invisible to chat UIs and Hermes' model probe, and /v1/models/<id> 404'd."""
    mock_a = await mock_llm(models=["alpha", "shared"])
    mock_b = await mock_llm(models=["beta", "shared"])
    proxy = await make_proxy(_fleet_config(mock_a.url, mock_b.url))
    client = openai_client(proxy.url)
    listed = [m.id for m in (await client.models.list()).data]
    assert sorted(listed) == ["alpha", "beta", "qwen", "shared"]  # once each, dead one skipped
    beta = await client.models.retrieve("beta")
    assert beta.owned_by == "mock"
    assert (await client.models.retrieve("qwen")).owned_by == "llm-throttle"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")


async def test_models_list_is_cached_briefly(mock_llm, make_proxy):
    """Hazard: a UI polling /v1/models would multiply requests to every upstream."""
    mock_a = await mock_llm(models=["alpha"])
    mock_b = await mock_llm(models=["beta"])
    proxy = await make_proxy(_fleet_config(mock_a.url, mock_b.url))
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.get(proxy.url + "/v1/models") as response:
                assert response.status == 200
    assert mock_a.state.requests_by_path["/v1/models"] == 1
    assert mock_b.state.requests_by_path["/v1/models"] == 1


async def test_models_with_no_upstream_answering_is_a_502(make_proxy):
    """Hazard: a fleet with every upstream down must say so, not list nothing as a success."""
    proxy = await make_proxy({"upstreams": {"dead": {"url": f"http://127.0.0.1:{free_port()}"}},
                              "models": {"*": {"upstreams": ["dead"]}}})
    async with aiohttp.ClientSession() as session, \
            session.get(proxy.url + "/v1/models") as response:
        assert response.status == 502
        assert (await response.json())["error"]["type"]
