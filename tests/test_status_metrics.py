"""Observable: JSON status, Prometheus metrics, health, and the status command."""

from __future__ import annotations

import asyncio

import aiohttp

from proxy.cli import main
from proxy.limits.base import ResourceState
from proxy.status import RateWindow, SaturationTracker
from tests.conftest import one_model_config
from tests.status_wait import wait_for_status

MESSAGES = [{"role": "user", "content": "hi"}]


async def test_status_json_while_saturated(mock_llm, make_proxy):
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    config = one_model_config(mock.url, max_in_flight=1)
    config["gpus"] = {"g0": {"max_in_flight": 4}}
    config["upstreams"]["up"].update(gpus=["g0"], max_in_flight=2)
    proxy = await make_proxy(config)
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 1}
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(session.post(
            proxy.url + "/v1/chat/completions", json=body, headers={"x-mock-fault": "delay:0.5"}))
            for _ in range(3)]
        await wait_for_status(proxy, lambda d: d["queue"]["depth"] == 2)
        await asyncio.sleep(0.1)
        async with session.get(proxy.url + "/throttle/status") as response:
            doc = await response.json()
        async with session.get(proxy.url + "/metrics") as response:
            metrics = await response.text()
        async with session.get(proxy.url + "/healthz") as response:
            assert (await response.json())["status"] == "ok"
        for task in tasks:
            (await task).close()
    model = doc["models"]["m"]
    assert model["in_flight"] == 1 and model["cap"] == 1 and model["queued"] == 2
    assert model["saturated"] is True and model["oldest_wait_s"] >= 0.1
    assert doc["upstreams"]["up"]["cap"] == 2 and doc["gpus"]["g0"]["cap"] == 4
    assert doc["queue"]["depth"] == 2
    for family in ("llm_throttle_in_flight", "llm_throttle_queue_depth",
                   "llm_throttle_queue_wait_seconds", "llm_throttle_requests_total",
                   "llm_throttle_rejections_total", "llm_throttle_tokens_total",
                   "llm_throttle_upstream_latency_seconds",
                   "llm_throttle_time_to_first_token_seconds", "llm_throttle_store_degraded"):
        assert family in metrics, family
    assert 'llm_throttle_in_flight{kind="model",name="m"} 1.0' in metrics
    assert 'llm_throttle_queue_depth{kind="model",name="m"} 2.0' in metrics


async def test_status_lists_queued_attributed_requests_and_says_so(mock_llm, make_proxy):
    """Hazard (issue 14's bench): a task whose one request was queued was missing from
    ``attributed``, and an empty table read as "attribution unknown", so the dispatcher counted
    outside traffic as its workers' and a queued final call as still to come. With a capped
    attribution the status lists queued requests too and says it lists them all."""
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    config = one_model_config(mock.url, max_in_flight=1)
    config["attribution"] = {"header": "x-hermes-task", "max_in_flight": 4}
    proxy = await make_proxy(config)
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 1}
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/throttle/status") as response:
            idle = await response.json()
        assert idle["attribution_listed"] is True and idle["attributed"] == {}
        tasks = [asyncio.create_task(session.post(
            proxy.url + "/v1/chat/completions", json=body,
            headers={"x-mock-fault": "delay:0.5", "x-hermes-task": task}))
            for task in ("t_1", "t_2")]
        doc = await wait_for_status(proxy, lambda d: d["queue"]["depth"] == 1)
        for task in tasks:
            (await task).close()
    entries = {name.rpartition("/")[2]: entry for name, entry in doc["attributed"].items()}
    assert sorted((e["in_flight"], e["queued"]) for e in entries.values()) == [(0, 1), (1, 0)]


async def test_status_without_capped_attribution_does_not_claim_a_full_list(mock_llm, make_proxy):
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    config = one_model_config(mock.url)
    config["attribution"] = {"header": "x-hermes-task"}
    proxy = await make_proxy(config)
    assert (await proxy.proxy.status_json())["attribution_listed"] is False


async def test_metrics_count_requests_tokens_and_ttft(mock_llm, make_proxy, openai_client):
    mock = await mock_llm(ttft_s=0, tpot_s=0, output_tokens=5)
    proxy = await make_proxy(one_model_config(mock.url))
    client = openai_client(proxy.url)
    await client.chat.completions.create(model="m", messages=MESSAGES)
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    async for _ in stream:
        pass
    metrics = (await proxy.proxy.admin.handle_metrics(None)).body.decode()
    assert 'llm_throttle_requests_total{client="anonymous",model="m",status="200"} 2.0' in metrics
    assert 'llm_throttle_tokens_total{client="anonymous",kind="completion",model="m"} 10.0' \
        in metrics
    assert 'llm_throttle_time_to_first_token_seconds_count{model="m"} 1.0' in metrics


async def test_status_command_prints_a_table(mock_llm, make_proxy, capsys):
    mock = await mock_llm()
    proxy = await make_proxy(one_model_config(mock.url, max_in_flight=3))
    code = await asyncio.to_thread(main, ["status", "--url", proxy.url])
    out = capsys.readouterr().out
    assert code == 0
    assert "model:m" in out and "IN FLIGHT" in out
    assert await asyncio.to_thread(main, ["status", "--url", "http://127.0.0.1:1"]) == 1


def test_saturation_has_hysteresis():
    tracker = SaturationTracker()
    assert tracker.update("m", ResourceState(4, 4, 0, 0)) is False  # full, nobody waiting
    assert tracker.update("m", ResourceState(4, 4, 2, 1)) is True
    assert tracker.update("m", ResourceState(4, 4, 0, 0)) is True  # still at cap
    assert tracker.update("m", ResourceState(3, 4, 0, 0)) is False  # dropped to 3/4
    assert tracker.update("m", ResourceState(3, 4, 0, 0)) is False


def test_rate_window_counts_per_second_over_the_window():
    now = [100.0]
    window = RateWindow(window_s=10, clock=lambda: now[0])
    for _ in range(20):
        window.add()
    assert window.rate() == 2.0
    now[0] += 10.5
    assert window.rate() == 0.0


async def test_status_read_from_redis_says_whether_attribution_is_listed(make_store, store_kind,
                                                                         request):
    """The dispatcher may read the status from Redis alone (no proxy): the flag comes from the
    pool's stored config there, the same rule as the proxy's (a capped attribution)."""
    if store_kind != "redis":
        return
    from proxy.limits.base import LimitSpec
    from proxy.limits.redis_status import read_status_document

    url = request.getfixturevalue("redis_store_url")
    store = await make_store(LimitSpec(caps={"model:m": 1}, prefix_caps={"attr:": 4}))
    assert (await read_status_document(url))["attribution_listed"] is True
    await store.update_spec(LimitSpec(caps={"model:m": 1}))  # a reload drops the attribution
    assert (await read_status_document(url))["attribution_listed"] is False
