"""The loop's control on what the GPU needs: hold reasons, the ramp, health, reacting between
ticks, the boards' passes and the Hermes counts on /metrics. Stand-ins for hermes and the
proxy (``fakes``); fake time. What the proxy's reading says about the workers is
``test_signals``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy.dispatcher.endpoints import status_app
from proxy.dispatcher.hermes_model import MaxSemantics
from proxy.dispatcher.lock import BoardLocks, NullLock
from proxy.dispatcher.loop import Dispatcher
from proxy.dispatcher.policy import Watermarks
from proxy.dispatcher.settings import DispatchSettings

from .fakes import FakeBacklog, FakeClock, FakeHermes, make_dispatcher


async def test_a_locked_out_instance_says_so() -> None:
    """Hazard: a second instance whose boards are all locked logged "nothing ready" while
    20 tasks were ready."""
    d, hermes, _, _ = make_dispatcher({"a": {"ready": 20}}, taken={"a"})
    report = await d.tick()
    assert report.holding and report.hold_reason == "locked_out"
    assert "locked out: 20 ready" in report.decision and hermes.calls == []
    assert d.status()["holding"] is True and d.status()["hold_reason"] == "locked_out"
    text = d.metrics.render().decode()
    assert 'llm_throttle_dispatch_holding{reason="locked_out"} 1.0' in text


async def test_proxy_down_holds_with_its_reason_and_healthz_turns_503(
    aiohttp_client: Any,
) -> None:
    """Hazard: with the proxy down, `holding` read 0 on /metrics, false on /status, and
    /healthz answered 200."""
    d, hermes, source, clock = make_dispatcher({"a": {"ready": 5}}, unhealthy_after=2)
    client: TestClient = await aiohttp_client(status_app(d))
    source.queued = None
    await d.tick()
    assert (await client.get("/healthz")).status == 200  # one failed read: not yet
    clock.now += 10
    await d.tick()
    resp = await client.get("/healthz")
    assert resp.status == 503 and (await resp.json())["hold_reason"] == "proxy_unreachable"
    doc = await (await client.get("/status")).json()
    assert doc["holding"] is True and doc["hold_reason"] == "proxy_unreachable"
    assert doc["last_tick"]["hold_reason"] == "proxy_unreachable"
    text = await (await client.get("/metrics")).text()
    assert 'llm_throttle_dispatch_holding{reason="proxy_unreachable"} 1.0' in text
    assert 'llm_throttle_dispatch_holding{reason="backlog_high"} 0.0' in text
    assert [c for c in hermes.calls if c[1] > 0] == []
    source.queued = 0
    await d.tick()
    assert (await client.get("/healthz")).status == 200


async def test_an_unreadable_document_is_backlog_unknown() -> None:
    d, _, source, _ = make_dispatcher({"a": {"ready": 5}})
    source.garbled = True
    report = await d.tick()
    assert report.hold_reason == "backlog_unknown" and report.spawned == 0


async def test_a_model_the_proxy_does_not_serve_warns_every_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Hazard: a --models name matching no route read as a backlog of 0 (DEBUG line only)."""
    d, hermes, source, clock = make_dispatcher({"a": {"ready": 5}})
    source.extra["missing"] = ("stub-model",)
    with caplog.at_level(logging.WARNING, logger="llm_throttle.dispatch"):
        for _ in range(3):
            report = await d.tick()
            clock.now += 10
    assert report.hold_reason == "backlog_unknown" and "stub-model" in report.decision
    warnings = [r for r in caplog.records if r.getMessage().startswith("--models stub-model")]
    assert len(warnings) == 3 and all(r.levelno == logging.WARNING for r in warnings)
    assert [c for c in hermes.calls if c[1] > 0] == []


async def test_after_an_outage_the_ramp_goes_1_2_4() -> None:
    """Hazard: after the proxy came back the dispatcher jumped straight to the full grant."""
    d, hermes, source, clock = make_dispatcher({"a": {"ready": 30}}, cap=20, max_running=12)
    source.queued = None
    await d.tick()
    source.queued = 0
    spawned = []
    for step in range(8):  # a tick every half second
        clock.now += 0.5
        report = await d.tick()
        spawned.append(report.spawned)
    # seconds 0, 1, 2, 3 after the outage: 1, 2, 4, then the rest of the 12
    assert spawned == [1, 0, 2, 0, 4, 0, 5, 0], spawned
    assert hermes.boards["a"]["running"] == 12


async def test_a_short_hold_resumes_at_once_but_a_long_one_ramps() -> None:
    d, _, source, clock = make_dispatcher({"a": {"ready": 30}}, cap=3, ramp_after_s=30)
    source.queued = 5
    await d.tick()
    clock.now += 10
    source.queued = 0
    assert (await d.tick()).spawned == 3  # held 10 s: no ramp (a first wave of 3)
    d, _hermes, source, clock = make_dispatcher({"a": {"ready": 30}}, cap=3, ramp_after_s=30)
    source.queued = 5
    await d.tick()
    clock.now += 40
    source.queued = 0
    assert (await d.tick()).spawned == 1  # held 40 s: slow start


async def test_the_watcher_wakes_a_tick_when_a_slot_frees() -> None:
    d, hermes, source, _ = make_dispatcher({"a": {"running": 6, "ready": 5}}, cap=3, in_flight=3,
                                cheap=True)
    report = await d.tick()
    assert report.spawned == 0  # at target, GPU full
    assert not await d.watch_once()
    hermes.boards["a"]["running"] = 5  # a task finished
    source.extra["in_flight"] = 2  # and its slot freed
    assert await d.watch_once()


async def test_without_a_cheap_probe_a_finished_request_wakes_a_tick() -> None:
    d, _hermes, source, _ = make_dispatcher({"a": {"running": 6, "ready": 5}}, cap=3, in_flight=3)
    await d.tick()
    assert not await d.watch_once()
    source.extra["in_flight"] = 2
    assert await d.watch_once()


async def test_run_fills_a_freed_slot_within_a_second_not_at_the_next_interval() -> None:
    d, hermes, source, _ = make_dispatcher({"a": {"running": 6, "ready": 5}}, cap=3, in_flight=3,
                                cheap=True, interval_s=60, react_s=0.05)
    d.clock = asyncio.get_running_loop().time
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    try:
        await asyncio.sleep(0.3)
        assert hermes.calls == [("a", 0)]  # the first tick: maintenance only
        hermes.boards["a"]["running"] = 5
        source.extra["in_flight"] = 2
        for _ in range(100):
            if len(hermes.calls) > 1:
                break
            await asyncio.sleep(0.01)
        assert hermes.calls[1:] == [("a", 6)]
        assert d.last is not None and d.last.trigger == "watch"
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_hermes_counts_on_metrics() -> None:
    d, hermes, _, _ = make_dispatcher({"a": {"ready": 2, "todo": 3, "triage": 1, "blocked": 1,
                                  "done": 7, "running": 1}}, cap=3)
    hermes.next_failures = {"crashed": ["t_1"], "timed_out": 2}
    await d.tick()
    text = d.metrics.render().decode()
    for line in ('llm_throttle_dispatch_tasks{board="a",status="todo"} 3.0',
                 'llm_throttle_dispatch_tasks{board="a",status="triage"} 1.0',
                 'llm_throttle_dispatch_tasks{board="a",status="blocked"} 1.0',
                 'llm_throttle_dispatch_tasks{board="a",status="done"} 7.0',
                 'llm_throttle_dispatch_tasks{board="a",status="archived"} 0.0',
                 'llm_throttle_dispatch_tasks{board="a",status="ready"} 2.0',
                 'llm_throttle_dispatch_oldest_ready_age_seconds{board="a"} NaN',
                 'llm_throttle_dispatch_spawned_total{board="a"} 2.0',
                 'llm_throttle_dispatch_reclaimed_total{board="a"} 1.0',
                 'llm_throttle_dispatch_worker_failures_total{board="a",kind="crashed"} 1.0',
                 'llm_throttle_dispatch_worker_failures_total{board="a",kind="timed_out"} 2.0',
                 "llm_throttle_dispatch_target_running 6.0",
                 'llm_throttle_dispatch_capacity{kind="cap"} 3.0'):
        assert line in text, line


async def test_no_spawn_when_a_burst_arrives_between_the_decision_and_the_call() -> None:
    """Hazard: deciding and counting take time; a burst that reached the high mark after the
    tick decided still got workers started. The passes start together right after one fresh
    read, and a high backlog in it skips every spawning pass."""
    d, hermes, source, _ = make_dispatcher({"a": {"ready": 5}, "b": {"ready": 5}}, cap=3)
    real_read = source.read

    async def read_then_burst() -> Any:
        backlog = await real_read()
        source.queued = 9  # the burst lands right after the tick's own read
        return backlog

    source.read = read_then_burst  # type: ignore[method-assign]
    report = await d.tick()
    assert hermes.calls == [] and report.spawned == 0
    skipped = [b.skipped for b in report.boards.values() if b.skipped]
    assert skipped == ["backlog reached the high mark before dispatch"] * 2


async def test_a_draining_hold_ends_one_worker_start_up_before_the_queue_is_empty() -> None:
    """Hazard (issue-14 bench): after the outside burst the hold ended only at an empty queue;
    the workers spawned then took seconds to reach the GPU, which meanwhile went from 3 busy
    slots to 0. With the queue draining a request a second and a 5 s start-up, the hold ends
    at 3 queued (below the high mark of 4), the watcher wakes a tick for it, and workers start
    as soon as the queue as it is leaves room (2 queued), not at 0."""
    d, hermes, source, clock = make_dispatcher({"a": {"ready": 20}}, cap=3, in_flight=3, cheap=True)
    source.queued = 9
    assert (await d.tick()).holding
    woke = []
    for queued in (8, 7, 6, 5, 4, 3):
        clock.now += 1.0
        source.queued = queued
        woke.append(await d.watch_once())
    assert woke == [False] * 5 + [True]
    report = await d.tick("watch")
    assert not report.holding and "forecast 0 < low 1" in report.decision
    assert report.spawned == 0  # released; but 3 queued + 1 new would reach the high mark
    clock.now += 1.0
    source.queued = 2
    assert await d.watch_once()
    report = await d.tick("watch")
    assert report.spawned == 1 and hermes.calls[-1] == ("a", 1)  # before the queue is empty


async def test_the_lead_time_is_learned_from_a_spawned_task_s_first_request() -> None:
    d, _, source, clock = make_dispatcher({"a": {"ready": 20}}, cap=3)
    await d.tick()  # spawns t0..t5
    assert d.status()["lead_time_s"] == {"value": 5.0, "learned": False, "prior": 5.0}
    clock.now += 7.5
    source.extra["attributed_values"] = frozenset({"t0"})
    await d.watch_once()
    assert d.status()["lead_time_s"]["value"] == 7.5 and d.lead.learned


class SlowHermes(FakeHermes):
    """Each dispatch call takes a while, as the real CLI's seconds do; counts overlaps."""

    def __init__(self, boards: dict[str, dict[str, int]]) -> None:
        super().__init__(boards)
        self.active = self.most_at_once = 0

    async def dispatch(self, board: str, max_spawn: int) -> Any:
        self.active += 1
        self.most_at_once = max(self.most_at_once, self.active)
        try:
            await asyncio.sleep(0.05)
            return await super().dispatch(board, max_spawn)
        finally:
            self.active -= 1


async def test_the_boards_passes_run_at_once() -> None:
    """Hazard (issue-14 bench): the first tick's three dispatch calls ran one after the other
    (~1.5 s each), so the third board's workers started 3 s after the decision."""
    hermes = SlowHermes({"a": {"ready": 8}, "b": {"ready": 8}, "c": {"ready": 8}})
    source = FakeBacklog(0)
    source.extra = {"cap": 3, "in_flight": 0}
    d = Dispatcher(DispatchSettings(marks=Watermarks(high=4, low=1),
                                    semantics=MaxSemantics.RUNNING),
                   hermes=hermes, probe=hermes, backlog=source,  # type: ignore[arg-type]
                   locks=BoardLocks(lambda slug: NullLock()), clock=FakeClock())
    report = await d.tick()
    assert report.spawned == 3 and sorted(hermes.calls) == [("a", 1), ("b", 1), ("c", 1)]
    assert hermes.most_at_once == 3
    assert source.reads == 2  # the tick's read, and one fresh look before the spawning calls


async def test_pushed_reads_feed_the_ratio_at_the_poll_s_cadence() -> None:
    """Hazard: with the event stream a read comes at every change of the proxy's state, so
    busy moments would fill the ratio's window with samples and outweigh quiet ones."""
    d, _hermes, _source, clock = make_dispatcher({"a": {"running": 4, "ready": 10}},
                                                 cap=3, cheap=True, in_flight=2)
    await d.tick()
    before = d.ratio.readings
    for _ in range(20):  # twenty changes within one second
        clock.now += 0.05
        await d.watch_once()
    assert 1 <= d.ratio.readings - before <= 3
