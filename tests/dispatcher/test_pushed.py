"""The dispatcher following the proxy's event stream: a real proxy, the real HTTP client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.dispatcher.backlog import Backlog, HttpStatusBacklog, ProxyUnreachable
from proxy.dispatcher.pushed import PushedBacklog, events_url_for
from tests.conftest import one_model_config

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


class CountingPoll(HttpStatusBacklog):
    """The poll source, counting how often the dispatcher falls back to it."""

    reads = 0

    async def read(self) -> Backlog:
        self.reads += 1
        return await super().read()


def _pushed(proxy_url: str, **kw: Any) -> tuple[PushedBacklog, CountingPoll]:
    poll = CountingPoll(proxy_url + "/throttle/status", ["m"], api_key="adm")
    return PushedBacklog(events_url_for(proxy_url + "/throttle/status"), ["m"], poll,
                         api_key="adm", **kw), poll


def test_the_events_url_sits_next_to_the_status_url() -> None:
    assert events_url_for("http://h:8080/throttle/status") == "http://h:8080/throttle/events"
    assert events_url_for("http://h/p/throttle/status?x=1") == "http://h/p/throttle/events"


async def test_a_change_is_pushed_and_reads_cost_no_request(mock_llm, make_proxy, openai_client):
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    config = one_model_config(mock.url, max_in_flight=2)
    config["admin_key"] = "adm"
    proxy = await make_proxy(config)
    source, poll = _pushed(proxy.url)
    try:
        first = await source.read()  # before the stream is up: the poll answers
        assert first.cap == 2 and poll.reads == 1
        async with asyncio.timeout(10):
            while not source.connected:
                await asyncio.sleep(0.02)
        client = openai_client(proxy.url)
        call = asyncio.create_task(client.chat.completions.create(
            **BODY, extra_headers={"x-mock-fault": "delay:1.0"}))
        async with asyncio.timeout(10):
            while (await source.read()).in_flight != 1:
                assert await source.wait_changed(5.0)
        await call
        async with asyncio.timeout(10):
            while (await source.read()).in_flight != 0:
                await source.wait_changed(5.0)
        assert poll.reads == 1 and source.events >= 3  # idle, busy, idle again
    finally:
        await source.close()


async def test_without_a_stream_the_status_is_polled(mock_llm, make_proxy):
    """A proxy that refuses the stream (here: no subscriber allowed; an older proxy answers
    404) still gives a backlog on every read, from the status."""
    mock = await mock_llm()
    config = one_model_config(mock.url, max_in_flight=2)
    config["admin_key"] = "adm"
    config["events"] = {"max_subscribers": 0}
    proxy = await make_proxy(config)
    source, poll = _pushed(proxy.url, retry_s=0.1)
    try:
        for _ in range(5):
            assert (await source.read()).cap == 2
            assert not await source.wait_changed(0.05)  # nothing pushed: the wait is the poll
        assert poll.reads == 5 and not source.connected
        assert source.down_reason is not None and "503" in source.down_reason
    finally:
        await source.close()


async def test_a_proxy_that_goes_away_is_unreachable_not_stale(mock_llm, make_proxy):
    """Hazard: reading the last pushed state after the stream broke would spawn on a stale
    number; once the stream ends, reads go to the poll (and fail like it)."""
    mock = await mock_llm()
    config = one_model_config(mock.url, max_in_flight=2)
    config["admin_key"] = "adm"
    proxy = await make_proxy(config)
    source, poll = _pushed(proxy.url, retry_s=0.1)
    try:
        await source.read()
        async with asyncio.timeout(10):
            while not source.connected:
                await asyncio.sleep(0.02)
        await proxy.close()
        async with asyncio.timeout(10):
            while source.connected:
                await asyncio.sleep(0.02)
        reads = poll.reads
        with pytest.raises(ProxyUnreachable):
            await source.read()
        assert poll.reads == reads + 1
    finally:
        await source.close()


async def test_the_watcher_wakes_on_a_pushed_change_not_at_its_poll(mock_llm, make_proxy,
                                                                    openai_client):
    """The push channel's point: with a 30 s poll, a slot freed at the proxy is still filled
    within a few seconds, because the change arrives on the stream and wakes the watcher."""
    from proxy.dispatcher.hermes_model import MaxSemantics
    from proxy.dispatcher.lock import BoardLocks, NullLock
    from proxy.dispatcher.loop import Dispatcher
    from proxy.dispatcher.policy import Watermarks
    from proxy.dispatcher.settings import DispatchSettings

    from .fakes import CheapHermes

    mock = await mock_llm(ttft_s=0, tpot_s=0)
    config = one_model_config(mock.url, max_in_flight=2)
    config["admin_key"] = "adm"
    proxy = await make_proxy(config)
    source, _ = _pushed(proxy.url)
    hermes = CheapHermes({"a": {"running": 4, "ready": 5}})
    d = Dispatcher(DispatchSettings(marks=Watermarks(high=4, low=1), interval_s=60,
                                    react_s=30, semantics=MaxSemantics.RUNNING),
                   hermes=hermes, probe=hermes, backlog=source,  # type: ignore[arg-type]
                   locks=BoardLocks(lambda slug: NullLock()))
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    try:
        async with asyncio.timeout(10):
            while not source.connected or d.last is None:
                await asyncio.sleep(0.02)
        assert d.last.spawned == 0  # 4 running = 2 slots x 2 tasks per slot
        assert d.status()["events"]["connected"] is True
        call = asyncio.create_task(openai_client(proxy.url).chat.completions.create(
            **BODY, extra_headers={"x-mock-fault": "delay:1.0"}))
        async with asyncio.timeout(10):
            while (await source.read()).in_flight != 1:
                await asyncio.sleep(0.02)
        hermes.boards["a"]["running"] = 3  # a task finished...
        await call  # ...and its request's slot freed
        async with asyncio.timeout(10):
            while not hermes.calls or hermes.calls[-1] != ("a", 4):
                await asyncio.sleep(0.02)
        assert d.last.trigger == "watch"
    finally:
        stop.set()
        await task
        await source.close()
