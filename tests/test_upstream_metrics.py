"""``/upstreams/<name>/metrics``: each upstream's own metrics, behind the admin key."""

from __future__ import annotations

import aiohttp

from loadtest.processes import free_port
from tests.conftest import one_model_config


async def test_upstream_metrics_are_served_per_upstream_behind_the_admin_key(mock_llm,
                                                                             make_proxy):
    """Hazard: llama.cpp's and vLLM's own /metrics were answered by the proxy's, so the
    server's KV-cache and queue series could not be scraped through the proxy at all."""
    mock = await mock_llm()
    dead_port = free_port()  # nobody listens there
    config = one_model_config(mock.url)
    config["upstreams"]["dead"] = {"url": f"http://127.0.0.1:{dead_port}"}
    config["admin_key"] = "admin-secret"
    proxy = await make_proxy(config)
    admin = {"Authorization": "Bearer admin-secret"}
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/upstreams/up/metrics") as response:
            assert response.status == 401
        async with session.get(proxy.url + "/upstreams/up/metrics", headers=admin) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
        assert "vllm:num_requests_running" in text and "llm_throttle_" not in text
        async with session.get(proxy.url + "/upstreams/nope/metrics", headers=admin) as response:
            assert response.status == 404
            assert "'nope'" in (await response.json())["error"]["message"]
        async with session.get(proxy.url + "/upstreams/dead/metrics", headers=admin) as response:
            assert response.status == 502
            assert (await response.json())["error"]["code"]
        async with session.get(proxy.url + "/metrics", headers=admin) as response:
            own = await response.text()
    assert "vllm:" not in own and "llm_throttle_in_flight" in own
