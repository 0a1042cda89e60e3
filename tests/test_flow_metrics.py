"""Per-flow fair-share figures: Prometheus series bounded like attribution values, and each
flow's share of the last minute in the status document's ``flows``."""

from __future__ import annotations

import aiohttp
import pytest

from proxy.flow_metrics import MAX_FLOW_SERIES, FlowShares, folded
from proxy.limits.base import FlowState
from tests.conftest import one_model_config

MESSAGES = [{"role": "user", "content": "hi"}]


def test_flow_series_are_bounded_and_the_rest_folded():
    """Hazard: one series per attribution value grows without bound; past the busiest
    MAX_FLOW_SERIES the rest are summed into ``other`` of their class (nothing lost)."""
    flows = {f"batch:f{i}": FlowState(1, float(i), 10.0) for i in range(MAX_FLOW_SERIES + 30)}
    out = folded(flows)
    assert len(out) == MAX_FLOW_SERIES + 1
    queued, served, counter = out[("batch", "other")]
    assert (queued, served, counter) == (30, 300.0, None)
    assert sum(v[1] for v in out.values()) == 10.0 * (MAX_FLOW_SERIES + 30)


def test_shares_of_the_last_minute():
    """Shares are fractions of all tokens in the window; tokens older than a minute drop out."""
    now = [1000.0]
    shares = FlowShares(clock=lambda: now[0])
    shares.add("batch", "a", 300)
    shares.add("batch", "b", 100)
    assert shares.shares() == {"batch:a": 0.75, "batch:b": 0.25}
    now[0] += 61
    shares.add("batch", "b", 50)
    assert shares.shares() == {"batch:b": 1.0}


async def test_status_and_metrics_show_each_flow(store_kind, mock_llm, make_proxy):
    """Two clients served through the real proxy: each flow has its served tokens in
    /metrics and its share of the last minute in /throttle/status (3:1 by tokens used)."""
    mock = await mock_llm(ttft_s=0, tpot_s=0, batch_size=8, output_tokens=8)
    config = one_model_config(mock.url, max_in_flight=2)
    config["clients"] = {"a": {"key": "a-key"}, "b": {"key": "b-key"}}
    proxy = await make_proxy(config)
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 8}
    async with aiohttp.ClientSession() as session:
        for key, n in (("a-key", 3), ("b-key", 1)):
            for _ in range(n):
                async with session.post(proxy.url + "/v1/chat/completions", json=body,
                                        headers={"Authorization": f"Bearer {key}"}) as r:
                    assert r.status == 200, await r.text()
        await proxy.proxy.store.drain()
        async with session.get(proxy.url + "/throttle/status") as r:
            flows = (await r.json())["flows"]
        async with session.get(proxy.url + "/metrics") as r:
            text = await r.text()
    assert flows["batch:a"]["share_last_minute"] == 0.75, flows
    assert flows["batch:b"]["share_last_minute"] == 0.25, flows
    assert 'llm_throttle_flow_served_tokens_total{class="batch",flow="a"}' in text
    assert 'llm_throttle_flow_queued{class="batch",flow="b"} 0.0' in text


@pytest.mark.parametrize("store_kind", ["redis"], indirect=True)
async def test_two_hosts_on_one_redis_share_flow_counters_not_last_minute(
        store_kind, mock_llm, make_proxy):
    """On the Redis store the counters, queued and served tokens of a flow are the store's,
    the same from every host; ``share_last_minute`` is each host's own view (docs/api.md).
    Hazard: per-host counters would let each host hand a flow its full share."""
    mock = await mock_llm(ttft_s=0, tpot_s=0, batch_size=8, output_tokens=8)
    config = one_model_config(mock.url, max_in_flight=2)
    config["clients"] = {"a": {"key": "a-key"}, "b": {"key": "b-key"}}
    hosts = [await make_proxy(config), await make_proxy(config)]
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 8}
    docs = []
    async with aiohttp.ClientSession() as session:
        for host, key, n in ((hosts[0], "a-key", 3), (hosts[1], "b-key", 1)):
            for _ in range(n):
                async with session.post(host.url + "/v1/chat/completions", json=body,
                                        headers={"Authorization": f"Bearer {key}"}) as r:
                    assert r.status == 200, await r.text()
        for host in hosts:
            await host.proxy.store.drain()
        for host in hosts:
            async with session.get(host.url + "/throttle/status") as r:
                docs.append((await r.json())["flows"])
            async with session.get(host.url + "/metrics") as r:
                text = await r.text()
            served_a = 'llm_throttle_flow_served_tokens_total{class="batch",flow="a"}'
            assert served_a in text
    first, second = docs
    for flow in ("batch:a", "batch:b"):
        for field in ("queued", "counter", "served_tokens"):
            assert first[flow][field] == second[flow][field], (flow, field, docs)
    assert first["batch:a"]["served_tokens"] == 3 * first["batch:b"]["served_tokens"] > 0
    assert first["batch:a"]["share_last_minute"] == 1.0  # host 1 served only a
    assert second["batch:a"]["share_last_minute"] == 0.0
    assert second["batch:b"]["share_last_minute"] == 1.0
