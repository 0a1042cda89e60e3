"""The tick loop against stand-ins for hermes and the proxy: decisions become the right calls.

Time is a fake clock, so "once a minute" is tested without waiting a minute.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import pytest

from proxy.dispatcher.hermes_model import MaxSemantics
from proxy.dispatcher.lock import BoardLocks, NullLock
from proxy.dispatcher.loop import Dispatcher
from proxy.dispatcher.policy import Watermarks
from proxy.dispatcher.settings import DispatchSettings

from .fakes import FakeBacklog, FakeClock, FakeHermes, HeldElsewhere


def make(
    boards: dict[str, dict[str, int]],
    *,
    backlog: int = 0,
    max_running: int = 6,
    dry_run: bool = False,
    version: str = "0.19.0",
    semantics: MaxSemantics | None = None,
    taken: Mapping[str, bool] | None = None,
    only: tuple[str, ...] | None = None,
) -> tuple[Dispatcher, FakeHermes, FakeBacklog, FakeClock]:
    hermes, source, clock = FakeHermes(boards, version), FakeBacklog(backlog), FakeClock()
    taken = taken or {}
    locks = BoardLocks(lambda slug: HeldElsewhere() if taken.get(slug) else NullLock())
    settings = DispatchSettings(max_running=max_running, marks=Watermarks(high=8, low=2),
                                interval_s=10, maintenance_interval_s=60, boards=only,
                                dry_run=dry_run, semantics=semantics)
    d = Dispatcher(settings, hermes=hermes, probe=hermes, backlog=source,  # type: ignore[arg-type]
                   locks=locks, clock=clock)
    return d, hermes, source, clock


async def test_free_slots_become_dispatch_calls_with_live_cap_max() -> None:
    d, hermes, _, _ = make({"a": {"running": 1, "ready": 5}, "b": {"ready": 5}})
    await d.start()
    report = await d.tick()
    # 5 free: b (0 running) gets 3, a (1 running) gets 2 -> both end at 3 running.
    assert sorted(hermes.calls) == [("a", 3), ("b", 3)]
    assert report.boards["a"].grant == 2 and report.boards["b"].grant == 3
    assert report.spawned == 5 and report.ok


async def test_old_hermes_gets_a_per_pass_max() -> None:
    d, hermes, _, _ = make({"a": {"running": 1, "ready": 5}}, version="0.12.0")
    await d.start()
    await d.tick()
    assert hermes.calls == [("a", 5)]


async def test_unknown_version_assumes_the_meaning_that_cannot_overspawn() -> None:
    d, hermes, _, _ = make({"a": {"running": 1, "ready": 5}}, version="broken")
    await d.start()
    assert d.semantics is MaxSemantics.SPAWNS and d.warnings
    await d.tick()
    assert hermes.calls == [("a", 5)]


async def test_never_over_the_cap_across_ticks() -> None:
    d, hermes, _, clock = make({"a": {"ready": 20}, "b": {"ready": 20}}, max_running=4)
    await d.start()
    for _ in range(5):
        await d.tick()
        clock.now += 10
        total = sum(c.get("running", 0) for c in hermes.boards.values())
        assert total <= 4
    assert hermes.boards["a"]["running"] == hermes.boards["b"]["running"] == 2


async def test_holding_spawns_nothing_but_maintains_once_a_minute() -> None:
    d, hermes, source, clock = make({"a": {"running": 2, "ready": 5}}, backlog=9)
    await d.start()
    report = await d.tick()
    assert report.holding and "high 8" in report.decision
    assert hermes.calls == [("a", 0)]  # first tick: the maintenance pass is due
    assert report.boards["a"].maintenance
    for _ in range(5):  # 50 s more of holding: no call at all
        clock.now += 10
        source.queued = 5  # between the marks: still holding
        report = await d.tick()
        assert report.holding
    assert hermes.calls == [("a", 0)]
    clock.now += 10  # 60 s after the first pass
    await d.tick()
    assert hermes.calls == [("a", 0), ("a", 0)]
    clock.now += 10
    source.queued = 1  # below low: resume
    report = await d.tick()
    assert not report.holding and report.decision.startswith("resume")
    assert hermes.calls[-1] == ("a", 3)  # after a 70 s hold the ramp starts with one spawn


async def test_idle_boards_with_running_tasks_get_maintenance_while_spawning_elsewhere() -> None:
    """A crashed worker counts as running until reclaimed, so every board gets its pass."""
    d, hermes, _, clock = make({"a": {"running": 2}, "b": {"ready": 9}}, max_running=4)
    await d.start()
    await d.tick()
    assert ("a", 0) in hermes.calls and ("b", 2) in hermes.calls
    hermes.calls.clear()
    clock.now += 10
    await d.tick()
    assert [c for c in hermes.calls if c[0] == "a"] == []


async def test_unreadable_backlog_spawns_nothing() -> None:
    d, hermes, source, clock = make({"a": {"ready": 5}})
    source.queued = None
    await d.start()
    report = await d.tick()
    assert not report.ok and "backlog" in (report.error or "")
    assert report.backlog is None and "proxy unreachable" in report.decision
    assert hermes.calls == [("a", 0)]  # maintenance only
    source.queued = 0
    clock.now += 10
    report = await d.tick()
    assert report.ok and hermes.calls[-1] == ("a", 1)  # back after an outage: slow start


async def test_unreadable_board_counts_end_the_tick_and_the_next_retries() -> None:
    d, hermes, _, clock = make({"a": {"ready": 5}})
    hermes.fail_counts = True
    await d.start()
    report = await d.tick()
    assert not report.ok and "boards:" in (report.error or "") and hermes.calls == []
    assert d.metrics.hermes_failures.labels(command="boards")._value.get() == 1
    hermes.fail_counts = False
    clock.now += 10
    assert (await d.tick()).ok and hermes.calls == [("a", 5)]


async def test_one_failing_board_does_not_stop_the_others() -> None:
    d, hermes, _, _ = make({"a": {"ready": 2}, "b": {"ready": 2}})
    hermes.fail_boards = {"a"}
    await d.start()
    report = await d.tick()
    assert not report.ok
    assert "stderr" in (report.boards["a"].error or "")
    assert report.boards["b"].spawned == ("t0", "t1")


async def test_a_failed_maintenance_pass_is_retried_next_tick() -> None:
    d, hermes, _, clock = make({"a": {"running": 1}})
    hermes.fail_boards = {"a"}
    await d.start()
    await d.tick()
    hermes.fail_boards = set()
    clock.now += 10
    await d.tick()
    assert hermes.calls == [("a", 0), ("a", 0)]


async def test_dry_run_calls_nothing() -> None:
    d, hermes, _, _ = make({"a": {"running": 1, "ready": 5}}, dry_run=True)
    await d.start()
    report = await d.tick()
    assert hermes.calls == []
    assert report.boards["a"].max_arg == 6 and report.dry_run
    assert "would_dispatch_max=a:6" in report.log_line()


async def test_dry_run_shows_maintenance_once_a_minute_too() -> None:
    d, hermes, _, clock = make({"a": {"running": 1}}, dry_run=True)
    await d.start()
    shown = []
    for _ in range(7):
        report = await d.tick()
        shown.append(report.boards["a"].maintenance)
        clock.now += 10
    assert shown == [True, False, False, False, False, False, True] and hermes.calls == []


async def test_boards_locked_elsewhere_count_but_are_not_dispatched() -> None:
    d, hermes, _, _ = make({"a": {"running": 4, "ready": 5}, "b": {"ready": 5}},
                           taken={"a": True})
    await d.start()
    report = await d.tick()
    assert hermes.calls == [("b", 2)]  # 6 - 4 running on a
    assert report.boards["a"].skipped and report.ok  # skipping a board is not a failure
    assert "another dispatcher" in report.log_line()


async def test_only_the_named_boards() -> None:
    d, hermes, _, _ = make({"a": {"ready": 5}, "b": {"ready": 5}}, only=("b", "gone"))
    await d.start()
    report = await d.tick()
    assert hermes.calls == [("b", 5)]
    assert "gone" in (report.error or "")


async def test_log_line_has_everything(caplog: pytest.LogCaptureFixture) -> None:
    d, _, _, _ = make({"a": {"running": 1, "ready": 2}, "b": {"ready": 1}}, backlog=1)
    await d.start()
    with caplog.at_level(logging.INFO, logger="llm_throttle.dispatch"):
        await d.tick()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tick=")]
    assert len(lines) == 1
    line = lines[0]
    for part in ("backlog=1", "hold=no", "running=a:1,b:0", "total=1", "ready=a:2,b:1",
                 "target=6", 'decision="spawn 3: 5 below target 6"', "spawned=a:2,b:1"):
        assert part in line, line


async def test_each_dispatcher_has_its_own_registry() -> None:
    d1, _, _, _ = make({"a": {"ready": 1}})
    d2, _, _, _ = make({"a": {"ready": 1}})
    for d in (d1, d2):
        await d.start()
        await d.tick()
    text = d1.metrics.render().decode()
    assert 'llm_throttle_dispatch_spawned_total{board="a"} 1.0' in text
    assert 'llm_throttle_dispatch_holding{reason="backlog_high"} 0.0' in text


async def test_run_stops_on_the_event() -> None:
    d, _, _, _ = make({"a": {"ready": 1}})
    d.settings = DispatchSettings(max_running=6, marks=Watermarks(8, 2), interval_s=0.05,
                                  semantics=MaxSemantics.RUNNING)
    await d.start()
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    # Wait for two ticks rather than sleeping a fixed time: on a loaded CI machine 0.2 s
    # did not always hold two 0.05 s ticks.
    for _ in range(200):
        if d.last is not None and d.last.number >= 2:
            break
        await asyncio.sleep(0.05)
    assert not task.done(), "run() returned before the stop event was set"
    stop.set()
    await asyncio.wait_for(task, 2)
    assert d.last is not None and d.last.number >= 2


class BrokenLock:
    """A lock store that is down (Redis unreachable)."""

    description = "redis key (down)"

    async def acquire(self) -> bool:
        raise ConnectionError("Error 111 connecting to redis")

    async def renew(self) -> bool:
        raise ConnectionError("Error 111 connecting to redis")

    async def release(self) -> None:
        return None


async def test_unreachable_lock_store_dispatches_nothing() -> None:
    d, hermes, _, _ = make({"a": {"ready": 5}})
    d.locks = BoardLocks(lambda slug: BrokenLock())
    await d.start()
    report = await d.tick()
    assert not report.ok and "locks:" in (report.error or "") and hermes.calls == []


async def test_a_lock_that_cannot_be_renewed_counts_as_lost() -> None:
    d, _, _, _ = make({"a": {"ready": 5}})
    await d.start()
    await d.locks.claim(["a"])
    d.locks._locks["a"] = BrokenLock()  # the store goes down after the board was taken
    assert not await d.locks.still_owned("a")
    assert d.locks.owned == set()
