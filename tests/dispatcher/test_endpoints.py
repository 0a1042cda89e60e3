"""The companion's HTTP side: ``/healthz``, ``/status`` and ``/metrics`` of a ticking loop."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from proxy.dispatcher.endpoints import status_app

from .test_loop import make


async def test_status_endpoints(aiohttp_client: Any) -> None:
    d, _, _, _ = make({"a": {"ready": 1}}, backlog=9)
    await d.start()
    client: TestClient = await aiohttp_client(status_app(d))
    resp = await client.get("/healthz")
    assert resp.status == 200  # no tick yet: starting, not stale
    await d.tick()
    doc = await (await client.get("/status")).json()
    assert doc["holding"] is True
    assert doc["last_tick"]["backlog"] == 9
    assert doc["hermes"]["max_semantics"] == "running"
    assert doc["settings"]["max_running"] == 6
    metrics = await (await client.get("/metrics")).text()
    assert "llm_throttle_dispatch_backlog 9.0" in metrics
    assert "llm_throttle_dispatch_hold_transitions_total{to=\"hold\"} 1.0" in metrics
    assert (await client.get("/healthz")).status == 200
