"""Learning how many running tasks keep one GPU slot busy."""

from __future__ import annotations

import pytest

from proxy.dispatcher.ratio import RatioSettings, TasksPerSlot


def test_the_prior_until_there_is_evidence() -> None:
    r = TasksPerSlot(RatioSettings(prior=2.0, min_samples=5, warmup_s=0))
    for t in range(4):
        r.observe(float(t), 6, 2)
    assert r.value(4.0) == 2.0 and not r.learned
    r.observe(4.0, 6, 2)
    assert r.value(4.0) == pytest.approx(3.0) and r.learned


def test_workers_that_spend_half_their_life_off_the_gpu() -> None:
    """Six running tasks with three requests open on average: two tasks per slot."""
    r = TasksPerSlot(RatioSettings(min_samples=4, warmup_s=0))
    for t, open_requests in enumerate([2, 4, 3, 3, 2, 4]):
        r.observe(float(t), 6, open_requests)
    assert r.value(6.0) == pytest.approx(2.0)


def test_clamped_and_idle_readings_ignored() -> None:
    r = TasksPerSlot(RatioSettings(min_samples=2, high=4.0, warmup_s=0))
    r.observe(0.0, 0, 0)  # nothing running: says nothing
    r.observe(1.0, 10, 1)
    r.observe(2.0, 10, 1)
    assert r.value(2.0) == 4.0  # 10 per slot, clamped
    r2 = TasksPerSlot(RatioSettings(min_samples=2, warmup_s=0))
    r2.observe(0.0, 2, 5)  # more open than running: other traffic, counted as all busy
    r2.observe(1.0, 2, 5)
    assert r2.value(1.0) == 1.0


def test_old_readings_leave_the_window() -> None:
    r = TasksPerSlot(RatioSettings(min_samples=2, window_s=10, warmup_s=0, high=4.0))
    r.observe(0.0, 4, 4)
    r.observe(1.0, 4, 4)
    assert r.value(1.0) == 1.0
    r.observe(20.0, 4, 1)
    r.observe(21.0, 4, 1)
    assert r.value(21.0) == 4.0


def test_bad_bounds() -> None:
    with pytest.raises(ValueError):
        RatioSettings(prior=0.5)


def test_workers_starting_together_do_not_read_as_a_high_ratio() -> None:
    """Hazard: six workers spawned at once all sit in start-up (no request yet); a ratio read
    then (6 running, 1 open) doubled the target and flooded the queue."""
    r = TasksPerSlot(RatioSettings(prior=2.0, min_samples=5, warmup_s=30))
    for t in range(20):
        r.observe(t * 0.5, 6, 0 if t < 15 else 1)
    assert r.value(10.0) == 2.0 and not r.learned
    for t in range(20, 80):
        r.observe(t * 0.5, 6, 3)
    assert r.learned and r.value(40.0) < 3.0  # the start-up still weighs, within the window
