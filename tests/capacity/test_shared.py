"""Adaptive caps across hosts on one Redis: one lease holder decides from every host's
samples, every host obeys and shows the same cap, and the lease moves when its holder leaves."""

from __future__ import annotations

import asyncio

from tests.capacity.test_adaptive_proxy import adaptive_config, closed_loop, status


async def test_one_cap_for_every_host_and_the_lease_moves(
        redis_store_url, mock_llm, make_proxy, openai_client):
    """Hazard: every host running its own controller and overwriting the others' cap (the
    shared number flapping), or the cap freezing when the deciding host dies."""
    mock = await mock_llm(batch_size=4, ttft_s=0.02, tpot_s=0.005, output_tokens=10,
                          thrash=0.8)
    config = {**adaptive_config(mock.url), "store": redis_store_url}
    first, second = await make_proxy(config), await make_proxy(config)
    managers = [first.proxy.capacity, second.proxy.capacity]
    await asyncio.sleep(0.5)  # a tick each: one of them takes the lease
    leaders = [m._shared.leader for m in managers]
    assert sorted(leaders) == [False, True]
    failures = await asyncio.gather(
        closed_loop(openai_client(first.url, timeout=30), 12, 6.0),
        closed_loop(openai_client(second.url, timeout=30), 12, 6.0))
    assert failures == [[], []]
    await asyncio.sleep(0.7)  # the follower adopts the last cap
    caps = [(await status(p.url))["upstreams"]["up"] for p in (first, second)]
    assert caps[0]["cap"] == caps[1]["cap"] == caps[0]["adaptive"]["cap"] \
        == caps[1]["adaptive"]["cap"]
    assert 1 <= caps[0]["cap"] <= 6, caps
    assert mock.state.peak <= 12  # both hosts together stayed near one shared cap
    leader, follower = (first, second) if leaders[0] else (second, first)
    await leader.close()
    for _ in range(50):
        if follower.proxy.capacity._shared.leader:
            break
        await asyncio.sleep(0.1)
    assert follower.proxy.capacity._shared.leader
