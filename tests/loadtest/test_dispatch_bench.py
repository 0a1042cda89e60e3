"""The dispatch bench's judgement of spawns against the high watermark."""

from __future__ import annotations

from loadtest.dispatch_bench import ModeResult, count_spawns


def test_a_run_between_two_samples_at_the_mark_is_a_spawn_at_high() -> None:
    r = ModeResult(mode="dispatch")
    count_spawns(r, 2, 4, 5, high=4)
    assert (r.spawns_at_high, r.spawns_crossing_high) == (2, 0)


def test_a_run_while_the_queue_crossed_the_mark_is_counted_apart() -> None:
    """Hazard: a dispatcher that spawns within milliseconds of the queue's drop below the
    mark was charged with the sample before the drop (the CI variant failed on it)."""
    r = ModeResult(mode="dispatch")
    count_spawns(r, 1, 3, 1, high=3)  # dropped below the mark in between
    count_spawns(r, 1, 2, 3, high=3)  # rose to the mark in between
    assert (r.spawns_at_high, r.spawns_crossing_high) == (0, 2)


def test_a_run_below_the_mark_counts_nowhere() -> None:
    r = ModeResult(mode="dispatch")
    count_spawns(r, 3, 0, 2, high=3)
    assert (r.spawns_at_high, r.spawns_crossing_high) == (0, 0)
