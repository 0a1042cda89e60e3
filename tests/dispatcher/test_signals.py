"""What the proxy's reading says about the workers (``proxy/dispatcher/signals.py``), as the
loop acts on it: their open requests, the outside traffic, the first wave still starting, and
the live workers of finished tasks about to make their final call; and which readings feed the
tasks-per-slot ratio. Stand-ins for hermes and the proxy (``fakes``); fake time."""

from __future__ import annotations

import pytest

from proxy.dispatcher.backlog import Backlog
from proxy.dispatcher.policy import BoardLoad
from proxy.dispatcher.signals import Finishing, FinishingTracker, pending_workers

from .fakes import make_dispatcher


async def test_spawns_up_to_cap_times_tasks_per_slot_without_max_running() -> None:
    d, hermes, source, _ = make_dispatcher({"a": {"ready": 20}}, cap=3)
    source.extra.update(attributed_open=0, attributed_in_flight=0)  # workers are attributed
    report = await d.tick()
    assert report.target == 6 and hermes.calls == [("a", 3)]  # a first wave, one per slot
    report = await d.tick()
    assert report.spawned == 0 and "3 are" in report.decision  # still starting
    source.extra.update(in_flight=3, attributed_open=3, attributed_in_flight=3,
                        attributed_values=frozenset({"t0", "t1", "t2"}))
    report = await d.tick()  # the first wave reached the GPU: the surplus starts
    assert hermes.calls[-1] == ("a", 6) and hermes.boards["a"]["running"] == 6


async def test_an_outside_burst_shrinks_the_target() -> None:
    """Requests on the model that no task sent take GPU slots away from the workers."""
    d, hermes, source, _ = make_dispatcher({"a": {"ready": 20}}, cap=3)
    source.extra.update(in_flight=3, attributed_open=1, attributed_in_flight=1)  # 2 outside
    report = await d.tick()
    assert report.target == 2 and hermes.calls == [("a", 1)]  # one free slot: one starts


async def test_a_short_outside_burst_does_not_drop_the_target_but_lasting_traffic_does() -> None:
    """Hazard (issue-14 bench, default queue order): the outside burst held all 3 slots for a
    moment, the target read 0 ("at target: 0 running of 0"), nothing was starting when the
    burst ended, and the GPU sat idle 5 GPU-seconds. Outside traffic lowers the target only
    by what it held for the whole last 30 s."""
    d, _, source, clock = make_dispatcher({"a": {"ready": 20}}, cap=3)
    source.extra.update(in_flight=0, attributed_open=0, attributed_in_flight=0)
    assert (await d.tick()).target == 6  # nothing outside
    clock.now += 5
    source.extra.update(in_flight=3, attributed_open=0, attributed_in_flight=0)  # a burst
    assert (await d.tick()).target == 6
    clock.now += 31  # still there after 30 s: it lasts
    assert (await d.tick()).target == 0
    source.extra.update(in_flight=1, attributed_open=0, attributed_in_flight=0)
    assert (await d.tick()).target == 4  # a drop counts at once


@pytest.mark.parametrize("finishing", [0, 1])
async def test_a_finished_task_s_live_worker_counts_as_about_to_ask(finishing: int) -> None:
    """Hazard (issue-14 bench, one spawn at the high mark in 7 runs): a worker makes its final
    LLM call after ``kanban_complete`` marked its task done, so the board counts no longer
    show it; a spawn decided at a queue of 2 (room for one below 4) met that call and the
    queue reached 4. Live workers of finished tasks now count as about to ask."""
    d, hermes, source, _ = make_dispatcher({"a": {"ready": 5, "running": 5}}, cap=3)
    source.queued = 2  # 3 in flight and 2 queued: every running task has its request open
    source.extra.update(in_flight=3, attributed_open=5, attributed_in_flight=3)
    hermes.finishing = {"a": frozenset({"t-done"})} if finishing else {}
    report = await d.tick()
    if finishing:
        assert report.spawned == 0 and hermes.calls == [("a", 0)]  # maintenance only
        assert "queue full soon" in report.decision
    else:
        assert hermes.calls == [("a", 6)]  # room for one: 5 running + 1


async def test_a_finished_worker_that_made_its_final_call_no_longer_holds_spawns() -> None:
    """A worker lives a second or two after its final call; counting it as about to ask
    kept a ready task waiting on an idle slot (seen in a bench run). Once seen asking
    after its task finished, it is not counted again."""
    d, hermes, source, _ = make_dispatcher({"a": {"ready": 5, "running": 5}}, cap=3)
    hermes.finishing = {"a": frozenset({"t-done"})}
    source.queued = 3  # no room below the high mark (4) this tick
    # its final call is open: 3 in flight, 3 queued, of which 4 are the running tasks'
    source.extra.update(in_flight=3, attributed_open=6, attributed_in_flight=3,
                        attributed_values=frozenset({"t-done", "r1", "r2", "r3", "r4"}))
    assert (await d.tick()).spawned == 0
    # the call ended; the process has not exited yet
    source.queued = 2
    source.extra.update(attributed_open=5,
                        attributed_values=frozenset({"r1", "r2", "r3", "r4"}))
    report = await d.tick()
    assert report.spawned == 1, report.decision


def test_a_running_task_s_first_call_is_not_its_final_one() -> None:
    """Only requests seen after a task finished count as its worker's final call."""
    tracker = FinishingTracker()
    tracker.saw_asking(frozenset(), frozenset({"t1"}))  # t1 running, first call open
    seen = tracker.observe(frozenset({"t1"}), frozenset())  # t1 done, no request open
    assert seen == Finishing(asking=0, to_ask=1)
    assert tracker.observe(frozenset({"t1"}), frozenset({"t1"})) == Finishing(1, 0)
    assert tracker.observe(frozenset({"t1"}), frozenset()) == Finishing(0, 0)
    backlog = Backlog(queued=0, in_flight=2, attributed_open=2, attributed_in_flight=2)
    loads = {"a": BoardLoad(running=3, ready=0)}
    # 3 running, 1 of the 2 open requests is a final call: 2 running tasks have none open
    assert pending_workers(backlog, loads, Finishing(asking=1, to_ask=1)) == 3
    assert pending_workers(backlog, loads) == 1


async def test_the_first_wave_waits_even_before_any_request_is_attributed() -> None:
    """Hazard (a bench run): at the start the proxy lists no attributed request yet, the
    dispatcher read that as "nothing known" and started the second wave of 3 at once, which
    slowed the first wave's start-up to 20 s."""
    d, _hermes, source, clock = make_dispatcher({"a": {"ready": 20}}, cap=3)
    assert (await d.tick()).spawned == 3
    clock.now += 2
    report = await d.tick()
    assert report.spawned == 0 and "3 are" in report.decision
    source.extra["in_flight"] = 3  # the first wave reached the GPU (unattributed: all count)
    clock.now += 5
    assert (await d.tick()).spawned == 3


async def test_readings_before_the_first_request_do_not_feed_the_ratio() -> None:
    """Hazard (a bench run): 20 s of six running workers all starting, no request open, went
    into the window as "3 tasks per slot" (the bound) and set the target to 9."""
    d, _hermes, source, clock = make_dispatcher({"a": {"running": 6, "ready": 10}},
                                                cap=3, cheap=True, max_running=6)
    await d.tick()
    for _ in range(40):  # 40 s of start-up: nothing asked yet
        clock.now += 1
        await d.watch_once()
    source.extra["in_flight"] = 3
    for _ in range(40):  # then half of them have a request open at any time
        clock.now += 1
        await d.watch_once()
    assert d.ratio.learned and abs(d.ratio.value(clock.now) - 2.0) < 0.01


async def test_final_calls_of_finished_tasks_do_not_feed_the_ratio() -> None:
    """Hazard (issue-14 bench, three runs of four): near the end the GPU serves the final calls
    of tasks already done; counted as the running tasks' requests they read as ~1 task per
    slot, the target fell to the running count, and the last ready task waited 12-20 s for
    a running one to finish although the queue had room."""
    # at the ceiling (4 running of max 4): nothing starts
    d, hermes, source, clock = make_dispatcher({"a": {"running": 4, "ready": 10}},
                                               cap=3, cheap=True, max_running=4)
    hermes.finishing = {"a": frozenset({"d1", "d2"})}
    await d.tick()
    # 4 open requests: the final calls of d1 and d2, and 2 of the 4 running tasks'
    source.extra.update(in_flight=3, attributed_open=4, attributed_in_flight=3,
                        attributed_values=frozenset({"d1", "d2", "r1", "r2"}))
    source.queued = 1
    for _ in range(40):
        clock.now += 1
        await d.watch_once()
    assert d.ratio.learned and abs(d.ratio.value(clock.now) - 2.0) < 0.01  # 4 running / 2
