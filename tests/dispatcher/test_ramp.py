"""The slow start on its own: when a ramp begins, what it allows, when it ends."""

from __future__ import annotations

from proxy.dispatcher.policy import Decision, HoldReason, blocked
from proxy.dispatcher.ramp import Ramp


def _spawn(target: int = 12, free: int = 12) -> Decision:
    return Decision(holding=False, reason="spawn", grants={"a": 1}, free_slots=free,
                    target=target)


def test_no_ramp_without_an_outage_or_a_long_hold() -> None:
    ramp = Ramp(after_s=30)
    assert ramp.allowance(0.0) is None
    ramp.observe(blocked(HoldReason.BACKLOG_HIGH, "hold"), 0.0)
    assert ramp.allowance(10.0) is None  # a 10 s hold: resume at once
    assert ramp.allowance(30.0) == 1  # a 30 s one: slow start


def test_an_outage_ramps_1_2_4_then_ends_at_the_target() -> None:
    ramp = Ramp(after_s=30)
    ramp.observe(blocked(HoldReason.PROXY_UNREACHABLE, "down"), 0.0)
    assert ramp.allowance(1.0) == 1
    ramp.observe(_spawn(), 1.0)
    assert ramp.active
    ramp.spawned(1)
    assert ramp.allowance(1.5) == 0 and ramp.allowance(2.0) == 2
    ramp.spawned(2)
    assert ramp.allowance(3.0) == 4
    ramp.observe(_spawn(target=7), 3.0)  # 1 + 2 + 4 reaches the target of 7
    assert not ramp.active and ramp.allowance(3.0) is None


def test_a_hold_stops_a_ramp_and_reaching_the_target_forgets_the_hold() -> None:
    ramp = Ramp(after_s=30)
    ramp.observe(blocked(HoldReason.PROXY_UNREACHABLE, "down"), 0.0)
    ramp.observe(_spawn(), 1.0)
    ramp.observe(blocked(HoldReason.BACKLOG_HIGH, "hold"), 2.0)
    assert not ramp.active
    ramp.observe(Decision(holding=False, reason="at target", free_slots=0, target=6), 3.0)
    assert ramp.allowance(100.0) is None
