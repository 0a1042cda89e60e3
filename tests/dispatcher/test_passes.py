"""One tick's dispatch calls on their own: which board gets which ``--max``, and when."""

from __future__ import annotations

from proxy.dispatcher.hermes_model import BoardCounts, MaxSemantics
from proxy.dispatcher.lock import BoardLocks, NullLock
from proxy.dispatcher.metrics import DispatcherMetrics
from proxy.dispatcher.passes import BoardPasses
from proxy.dispatcher.policy import Decision
from proxy.dispatcher.report import BoardTick, TickReport

from .fakes import FakeHermes


def _report(boards: dict[str, dict[str, int]]) -> TickReport:
    report = TickReport(number=1, at=0.0, holding=False, dry_run=False, trigger="interval")
    for slug, c in boards.items():
        report.boards[slug] = BoardTick(running=c.get("running", 0), ready=c.get("ready", 0),
                                        todo=0, by_status=dict(c), oldest_ready_s=None)
    return report


async def _never_high() -> bool:
    return False


async def test_a_grant_is_a_live_cap_max_and_an_idle_board_gets_maintenance_when_due() -> None:
    boards = {"a": {"running": 2, "ready": 5}, "b": {"running": 1}, "c": {"done": 3}}
    hermes = FakeHermes(boards)
    locks = BoardLocks(lambda slug: NullLock())
    await locks.claim(list(boards))
    passes = BoardPasses(hermes, locks, DispatcherMetrics(), maintenance_interval_s=60,
                         dry_run=False)
    counts = {slug: BoardCounts(slug, dict(c)) for slug, c in boards.items()}
    decision = Decision(holding=False, reason="spawn 2", grants={"a": 2})
    spawned = await passes.run(_report(boards), decision, counts, {"a", "b", "c"}, 0.0,
                               MaxSemantics.RUNNING, _never_high)
    # a: 2 running + 2 granted; b: unfinished work, never passed: maintenance; c: all done
    assert sorted(hermes.calls) == [("a", 4), ("b", 0)] and len(spawned) == 2
    hermes.calls.clear()
    await passes.run(_report(boards), Decision(holding=True, reason="hold"), counts,
                     {"a", "b", "c"}, 30.0, MaxSemantics.RUNNING, _never_high)
    assert hermes.calls == []  # maintenance not due again for 60 s
    await passes.run(_report(boards), Decision(holding=True, reason="hold"), counts,
                     {"a", "b", "c"}, 61.0, MaxSemantics.RUNNING, _never_high)
    assert sorted(hermes.calls) == [("a", 0), ("b", 0)]  # holding: maintenance still runs


async def test_a_lost_lock_or_a_high_queue_skips_the_spawning_call() -> None:
    boards = {"a": {"ready": 5}, "b": {"ready": 5}}
    hermes = FakeHermes(boards)
    held = {"b": False}

    class LostLater(NullLock):
        async def renew(self) -> bool:
            return held["b"]

    locks = BoardLocks(lambda slug: LostLater() if slug == "b" else NullLock())
    await locks.claim(list(boards))
    passes = BoardPasses(hermes, locks, DispatcherMetrics(), maintenance_interval_s=60,
                         dry_run=False)
    counts = {slug: BoardCounts(slug, dict(c)) for slug, c in boards.items()}
    report = _report(boards)

    async def high() -> bool:
        return True

    await passes.run(report, Decision(holding=False, reason="spawn", grants={"a": 1, "b": 1}),
                     counts, {"a", "b"}, 0.0, MaxSemantics.RUNNING, high)
    assert hermes.calls == []
    assert report.boards["a"].skipped == "backlog reached the high mark before dispatch"
    assert report.boards["b"].skipped == "lock lost before dispatch"
