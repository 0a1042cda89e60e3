"""The look ahead: a worker's start-up learned from its first request, and the queue's drain."""

from __future__ import annotations

from proxy.dispatcher.forecast import BacklogTrend, LeadTime


def test_lead_time_is_the_prior_until_a_spawned_task_asks() -> None:
    lead = LeadTime(prior_s=5.0)
    assert lead.value() == 5.0 and not lead.learned
    lead.spawned(100.0, ["t1", "t2"])
    lead.observe(103.0, ["other"])  # not ours
    assert not lead.learned
    lead.observe(108.0, ["t1"])
    assert lead.learned and lead.value() == 8.0
    lead.observe(109.0, ["t1", "t2"])  # t1 seen before: counted once
    assert lead.value() == 8.5


def test_lead_time_is_a_median_so_one_slow_start_barely_moves_it() -> None:
    lead = LeadTime()
    for i, latency in enumerate([4.0, 4.5, 60.0]):
        lead.spawned(0.0, [f"t{i}"])
        lead.observe(latency, [f"t{i}"])
    assert lead.value() == 4.5


def test_a_task_that_never_asks_is_forgotten() -> None:
    """Hazard: a crashed worker (or a value folded into ``other``) must not stay in the table
    for ever nor give a huge sample when its id is reused."""
    lead = LeadTime(horizon_s=30.0)
    lead.spawned(0.0, ["t1"])
    lead.observe(31.0, [])
    lead.observe(200.0, ["t1"])
    assert not lead.learned


def test_a_draining_queue_is_forecast_lower() -> None:
    trend = BacklogTrend(window_s=10.0)
    for i in range(11):  # one request drains per second
        trend.observe(float(i), 10 - i)
    assert abs((trend.slope() or 0) + 1.0) < 1e-9
    assert trend.forecast(3, 2.0) == 1
    assert trend.forecast(3, 8.0) == 0  # never below zero


def test_a_growing_or_flat_queue_is_forecast_as_it_is() -> None:
    """A forecast may end a hold sooner, never start one: a rising queue is not projected."""
    trend = BacklogTrend()
    for i in range(6):
        trend.observe(float(i), i)
    assert trend.forecast(5, 10.0) == 5
    flat = BacklogTrend()
    for i in range(6):
        flat.observe(float(i), 2)
    assert flat.forecast(2, 10.0) == 2


def test_too_few_or_too_close_readings_give_no_slope() -> None:
    trend = BacklogTrend(min_span_s=3.0)
    trend.observe(0.0, 5)
    trend.observe(0.5, 4)
    trend.observe(1.0, 3)
    assert trend.slope() is None and trend.forecast(3, 10.0) == 3
    trend.observe(20.0, 3)  # the old readings leave the 10 s window
    assert trend.slope() is None


def test_the_spawned_tasks_not_seen_asking_are_starting() -> None:
    lead = LeadTime(horizon_s=60.0)
    lead.spawned(0.0, ["t1", "t2", "t3"])
    assert lead.starting == 3
    lead.observe(5.0, ["t2"])
    assert lead.starting == 2
    lead.observe(61.0, [])
    assert lead.starting == 0  # never seen: forgotten with the horizon
