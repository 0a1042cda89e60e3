"""The pure decision: hysteresis between the watermarks and the fair share of free slots."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.dispatcher.policy import (
    BoardLoad,
    HoldReason,
    Watermarks,
    decide,
    fair_grants,
    next_holding,
    ramp_allowance,
    target_running,
)

MARKS = Watermarks(high=8, low=2)


def test_watermarks_must_leave_a_band() -> None:
    with pytest.raises(ValueError):
        Watermarks(high=4, low=4)
    with pytest.raises(ValueError):
        Watermarks(high=0, low=0)


@pytest.mark.parametrize(
    ("holding", "backlog", "expected"),
    [
        (False, 7, False),   # below high: keep spawning
        (False, 8, True),    # reaches high: hold
        (True, 7, True),     # between the marks: keep holding
        (True, 2, True),     # at low: still holding
        (True, 1, False),    # below low: resume
        (False, 3, False),   # between the marks while spawning: keep spawning
    ],
)
def test_hysteresis(holding: bool, backlog: int, expected: bool) -> None:
    assert next_holding(holding, backlog, MARKS) is expected


def test_no_flapping_on_a_backlog_that_oscillates_between_the_marks() -> None:
    """A backlog wobbling 3..7 after one spike must give exactly one hold and one release."""
    backlogs = [0, 9, 7, 3, 7, 3, 7, 1, 3, 7, 3, 7]
    states = []
    holding = False
    for b in backlogs:
        holding = next_holding(holding, b, MARKS)
        states.append(holding)
    assert states == [False, True, True, True, True, True, True, False,
                      False, False, False, False]


def test_equal_split_among_boards_with_ready_work() -> None:
    boards = {"a": BoardLoad(0, 10), "b": BoardLoad(0, 10), "c": BoardLoad(0, 0)}
    assert fair_grants(6, boards) == {"a": 3, "b": 3}


def test_a_board_ahead_gets_nothing_until_the_others_catch_up() -> None:
    boards = {"a": BoardLoad(4, 10), "b": BoardLoad(0, 10)}
    assert fair_grants(2, boards) == {"b": 2}
    assert fair_grants(6, boards) == {"a": 1, "b": 5}


def test_grants_never_exceed_ready() -> None:
    boards = {"a": BoardLoad(0, 1), "b": BoardLoad(0, 10)}
    assert fair_grants(6, boards) == {"a": 1, "b": 5}


def test_the_odd_slot_goes_to_the_board_with_the_most_ready_work() -> None:
    """Hazard: by rotation alone one board fell behind (4 ready against 2 on the others) and
    its last long task started alone at the end (issue 14's bench: the run's last 15 s). At
    equal running, the board with more work left gets the odd slot, whatever the rotation."""
    boards = {"a": BoardLoad(1, 2), "b": BoardLoad(1, 4), "c": BoardLoad(1, 2)}
    assert fair_grants(1, boards, tiebreak=["a", "c", "b"]) == {"b": 1}
    assert fair_grants(3, boards, tiebreak=["a", "c", "b"]) == {"a": 1, "b": 1, "c": 1}
    assert fair_grants(1, {"a": BoardLoad(0, 2), "b": BoardLoad(1, 9)}) == {"a": 1}


def test_the_odd_slot_follows_the_tiebreak_order() -> None:
    boards = {"a": BoardLoad(0, 10), "b": BoardLoad(0, 10)}
    assert fair_grants(1, boards, tiebreak=["b", "a"]) == {"b": 1}
    assert fair_grants(1, boards, tiebreak=["a", "b"]) == {"a": 1}


def test_decide_holds_and_grants_nothing() -> None:
    d = decide(holding=False, backlog=8, marks=MARKS, max_running=6,
               boards={"a": BoardLoad(0, 5)})
    assert d.holding and d.grants == {}
    assert "high 8" in d.reason


def test_decide_resumes_below_low_and_fills_the_cap() -> None:
    d = decide(holding=True, backlog=1, marks=MARKS, max_running=6,
               boards={"a": BoardLoad(2, 5), "b": BoardLoad(1, 5)})
    assert not d.holding
    assert d.free_slots == 3
    assert d.grants == {"a": 1, "b": 2}
    assert d.reason.startswith("resume")


def test_decide_at_cap() -> None:
    d = decide(holding=False, backlog=0, marks=MARKS, max_running=4,
               boards={"a": BoardLoad(5, 5)})
    assert d.grants == {} and d.free_slots == 0 and "at target" in d.reason


def test_boards_without_ready_work_still_count_against_the_cap() -> None:
    """Running tasks of a board with nothing ready (or another companion's) use slots too."""
    d = decide(holding=False, backlog=0, marks=MARKS, max_running=6,
               boards={"busy": BoardLoad(5, 0), "a": BoardLoad(0, 5)})
    assert d.grants == {"a": 1}


loads = st.dictionaries(
    st.sampled_from("abcdef"),
    st.builds(BoardLoad, running=st.integers(0, 12), ready=st.integers(0, 12)),
    max_size=6,
)


@given(loads, st.integers(1, 20), st.integers(0, 30), st.booleans())
def test_never_over_the_cap(boards: dict[str, BoardLoad], cap: int, backlog: int,
                            holding: bool) -> None:
    d = decide(holding=holding, backlog=backlog, marks=MARKS, max_running=cap, boards=boards)
    running = sum(b.running for b in boards.values())
    granted = sum(d.grants.values())
    assert granted <= max(cap - running, 0)
    for slug, n in d.grants.items():
        assert 0 < n <= boards[slug].ready
    if d.holding:
        assert granted == 0
    # Work-conserving: below the low mark, a slot stays free only when nothing is ready.
    if not d.holding and backlog < MARKS.low:
        ready = sum(b.ready for b in boards.values())
        assert granted == min(max(cap - running, 0), ready)


@given(loads, st.integers(1, 20))
def test_max_min_fair(boards: dict[str, BoardLoad], free: int) -> None:
    """After granting, a board with ready work left is never two behind another that got one."""
    grants = fair_grants(free, boards)
    after = {s: b.running + grants.get(s, 0) for s, b in boards.items()}
    for s, b in boards.items():
        if grants.get(s, 0) < b.ready:  # s could have taken more
            for t, n in grants.items():
                if n:
                    assert after[t] <= after[s] + 1


# -- control on what the GPU needs -----------------------------------------------------------

LOW_MARKS = Watermarks(high=4, low=1)


def test_the_target_is_cap_times_tasks_per_slot() -> None:
    """Hazard: a task cap equal to the GPU cap leaves slots idle while workers start or run
    tools; aiming at cap x tasks-per-slot keeps the GPU busy."""
    d = decide(holding=False, backlog=0, marks=LOW_MARKS, cap=3, tasks_per_slot=2.0,
               boards={"a": BoardLoad(2, 10)})
    assert d.target == 6 and d.grants == {"a": 3}  # 4 below it; at most 3 start at once
    d = decide(holding=False, backlog=0, marks=LOW_MARKS, cap=3, tasks_per_slot=2.0,
               boards={"a": BoardLoad(5, 10)})
    assert d.grants == {"a": 1}
    assert target_running(3, 1.5, None) == 5 and target_running(3, 2.0, 4) == 4
    assert target_running(None, 2.0, 4) == 4 and target_running(None, 2.0, None) is None


def test_max_running_is_a_ceiling_on_the_target() -> None:
    d = decide(holding=False, backlog=0, marks=LOW_MARKS, cap=3, tasks_per_slot=3.0,
               max_running=5, boards={"a": BoardLoad(0, 10)})
    assert d.target == 5 and d.grants == {"a": 3}  # the first wave: one per slot
    d = decide(holding=False, backlog=0, marks=LOW_MARKS, cap=3, tasks_per_slot=3.0,
               max_running=5, boards={"a": BoardLoad(3, 10)}, in_flight=3)
    assert d.grants == {"a": 2}


def test_outside_traffic_leaves_the_tasks_less_capacity() -> None:
    """Requests on the routes that are not the workers' (an outside burst) take slots: the
    target shrinks to what they leave, times tasks per slot."""
    d = decide(holding=False, backlog=0, marks=LOW_MARKS, cap=3, outside=2,
               tasks_per_slot=2.0, boards={"a": BoardLoad(0, 10)})
    assert d.target == 2 and d.grants == {"a": 1}  # one slot left: one starts at a time
    d = decide(holding=False, backlog=0, marks=LOW_MARKS, cap=3, outside=5,
               tasks_per_slot=2.0, boards={"a": BoardLoad(0, 10)})
    assert d.target == 0 and d.grants == {}


def test_while_spawning_workers_may_wait_in_the_queue_below_the_high_mark() -> None:
    """A worker needs seconds to its first request: below the target, spawning goes on with
    every slot busy and a short queue, so the next request is there when a slot frees."""
    d = decide(holding=False, backlog=2, marks=LOW_MARKS, cap=3, tasks_per_slot=2.0,
               boards={"a": BoardLoad(4, 10)})
    assert not d.holding and d.grants == {"a": 2}
    d = decide(holding=True, backlog=2, marks=LOW_MARKS, cap=3, tasks_per_slot=2.0,
               boards={"a": BoardLoad(4, 10)})
    assert d.holding and d.grants == {}  # but a hold lasts until below the low mark


def test_workers_about_to_ask_leave_less_room_in_the_queue() -> None:
    """Hazard: the workers' own requests pushed the queue to the high mark, and the hold that
    followed drained the pipeline to nothing (the GPU idle while new workers started)."""
    # 3 in flight, 1 queued, 2 running workers without a request yet: if they ask now the
    # queue is 3, one below the high mark: nothing more.
    d = decide(holding=False, backlog=1, marks=LOW_MARKS, cap=3, in_flight=3, pending=2,
               tasks_per_slot=3.0, boards={"a": BoardLoad(6, 10)})
    assert d.grants == {} and "queue full soon" in d.reason
    d = decide(holding=False, backlog=0, marks=LOW_MARKS, cap=3, in_flight=2, pending=1,
               tasks_per_slot=3.0, boards={"a": BoardLoad(5, 10)})
    assert d.grants == {"a": 3}  # one free slot... taken by the pending one; 3 may queue


def test_the_ramp_allowance_limits_the_grant() -> None:
    d = decide(holding=False, backlog=0, marks=LOW_MARKS, cap=3, tasks_per_slot=2.0,
               allowance=2, boards={"a": BoardLoad(0, 10), "b": BoardLoad(0, 10)})
    assert sum(d.grants.values()) == 2 and "ramp allows 2" in d.reason


def test_uncapped_models_without_a_ceiling_spawn_nothing() -> None:
    d = decide(holding=False, backlog=0, marks=LOW_MARKS, boards={"a": BoardLoad(0, 10)})
    assert d.grants == {} and d.target is None and "no target" in d.reason


def test_holding_names_its_reason() -> None:
    d = decide(holding=False, backlog=4, marks=LOW_MARKS, cap=3, boards={"a": BoardLoad(0, 1)})
    assert d.holding and d.hold_reason is HoldReason.BACKLOG_HIGH


def test_slow_start_doubles_every_second() -> None:
    """After an outage: 1 spawn in the first second, 2 more in the next, then 4, ..."""
    spawned = 0
    per_second = []
    for second in range(5):
        allowed = ramp_allowance(second + 0.5, spawned)
        per_second.append(allowed)
        spawned += allowed
    assert per_second == [1, 2, 4, 8, 16]
    assert ramp_allowance(0.9, 1) == 0  # used up within the second


@given(loads, st.integers(0, 20), st.integers(0, 25), st.integers(0, 6),
       st.floats(1.0, 4.0), st.one_of(st.none(), st.integers(1, 20)),
       st.one_of(st.none(), st.integers(0, 10)), st.booleans(), st.integers(0, 25),
       st.integers(0, 12), st.one_of(st.none(), st.integers(0, 25)), st.integers(0, 10))
def test_the_guarantee(boards: dict[str, BoardLoad], cap: int, outside: int, backlog: int,
                       ratio: float, max_running: int | None, allowance: int | None,
                       holding: bool, in_flight: int, pending: int,
                       forecast: int | None, starting: int) -> None:
    d = decide(holding=holding, backlog=backlog, marks=LOW_MARKS, boards=boards, cap=cap,
               outside=outside, tasks_per_slot=ratio, max_running=max_running,
               allowance=allowance, in_flight=in_flight, pending=pending, forecast=forecast,
               starting=starting)
    running = sum(b.running for b in boards.values())
    granted = sum(d.grants.values())
    if backlog >= LOW_MARKS.high:
        assert granted == 0 and d.holding  # whatever the forecast says
    expected = backlog if forecast is None else min(forecast, backlog)
    if d.holding or (holding and backlog >= LOW_MARKS.low and expected >= LOW_MARKS.low):
        assert granted == 0 and d.holding
    free = max(cap - outside, 0)
    assert running + granted <= max(math.ceil(free * ratio - 1e-9), running)
    if max_running is not None:
        assert running + granted <= max(max_running, running)
    if allowance is not None:
        assert granted <= allowance
    assert granted <= max(cap - outside - starting, 0)
    # if every pending worker and every new one asked now, the queue stays below high
    assert backlog + max(in_flight + pending + granted - cap, 0) < LOW_MARKS.high or not granted
    for slug, n in d.grants.items():
        assert 0 < n <= boards[slug].ready


def test_a_hold_ends_when_the_queue_will_have_drained_by_the_time_a_worker_starts() -> None:
    """Hazard (issue-14 bench): the hold after an outside burst ended only at an empty queue,
    and the workers spawned then needed ~8 s to reach the GPU, which idled meanwhile (3 -> 0
    busy slots). A queue forecast below the low mark ends the hold while it still drains."""
    boards = {"a": BoardLoad(0, 10)}
    d = decide(holding=True, backlog=3, marks=LOW_MARKS, cap=3, in_flight=3,
               tasks_per_slot=2.0, boards=boards)
    assert d.holding and d.grants == {}  # without a forecast: hold until below low
    d = decide(holding=True, backlog=2, marks=LOW_MARKS, cap=3, in_flight=3,
               tasks_per_slot=2.0, boards=boards, forecast=0)
    assert not d.holding and d.grants == {"a": 1}
    assert "forecast 0 < low 1" in d.reason
    # released, but the room is the queue's as it is: 2 queued + 1 new < high 4. Hazard (a
    # bench run): room for the queue as forecast let 3 start at a queue of 3, and requests
    # arriving during the 3 s dispatch call took the queue to 5 as the runs appeared.
    d = decide(holding=True, backlog=3, marks=LOW_MARKS, cap=3, in_flight=3,
               tasks_per_slot=2.0, boards=boards, forecast=0)
    assert not d.holding and d.grants == {} and "queue full soon" in d.reason


def test_a_forecast_never_releases_a_hold_at_the_high_mark() -> None:
    """The hard rule: nothing is spawned while the queue is at or above the high mark, however
    fast it seems to drain."""
    for holding in (False, True):
        d = decide(holding=holding, backlog=LOW_MARKS.high, marks=LOW_MARKS, cap=3,
                   in_flight=3, tasks_per_slot=2.0, boards={"a": BoardLoad(0, 10)},
                   forecast=0)
        assert d.holding and d.grants == {} and d.hold_reason is HoldReason.BACKLOG_HIGH


def test_a_forecast_above_the_backlog_counts_as_the_backlog() -> None:
    """A forecast can only end a hold sooner, never hold longer or shrink the queue's room."""
    a = decide(holding=False, backlog=1, marks=LOW_MARKS, cap=3, in_flight=3,
               tasks_per_slot=2.0, boards={"a": BoardLoad(2, 10)})
    b = decide(holding=False, backlog=1, marks=LOW_MARKS, cap=3, in_flight=3,
               tasks_per_slot=2.0, boards={"a": BoardLoad(2, 10)}, forecast=9)
    assert a == b


def test_no_more_workers_start_at_once_than_the_tasks_have_slots() -> None:
    """Hazard (issue-14 bench): six workers spawned together on a 2-core host took 16-25 s to
    their first request (three together: 8-9 s), so the GPU idled 18 s at the start instead
    of 10. The surplus over the slots starts once the first wave has reached the GPU."""
    boards = {"a": BoardLoad(0, 8), "b": BoardLoad(0, 8), "c": BoardLoad(0, 8)}
    d = decide(holding=False, backlog=0, marks=LOW_MARKS, cap=3, tasks_per_slot=2.0,
               boards=boards)
    assert d.target == 6 and sum(d.grants.values()) == 3
    assert "at most 3 starting at once; 0 are" in d.reason
    started = {slug: BoardLoad(1, 7) for slug in boards}
    d = decide(holding=False, backlog=0, marks=LOW_MARKS, cap=3, tasks_per_slot=2.0,
               boards=started, pending=3, starting=3)
    assert d.grants == {} and d.free_slots == 3  # the first wave has not asked yet
    d = decide(holding=False, backlog=0, marks=LOW_MARKS, cap=3, tasks_per_slot=2.0,
               boards=started, in_flight=2, pending=1, starting=1)
    assert sum(d.grants.values()) == 2 and "; 1 are" in d.reason


def test_ready_work_that_fits_in_the_queue_room_starts_above_the_target() -> None:
    """Hazard (issue-14 bench, the slower runs): the last ready task waited 5 s "at target: 5
    running of 4" while the queue had room, and its first call was then the run's end. When
    all the ready work fits in the queue's room it starts; a backlog of ready work still
    stops at the target, and ``--max-running`` still bounds everything."""
    # 5 running, all with a request open (3 in flight, 2 queued): room for 1 below the mark
    fit = {"holding": False, "backlog": 2, "marks": LOW_MARKS, "cap": 3,
           "tasks_per_slot": 1.3, "in_flight": 3, "pending_known": True}
    d = decide(**fit, boards={"a": BoardLoad(5, 1)})
    assert d.target == 4 and d.grants == {"a": 1} and "fit in the queue's room" in d.reason
    d = decide(**{**fit, "pending_known": False}, boards={"a": BoardLoad(5, 1)})
    assert d.grants == {}  # unattributed: the workers about to ask are not known
    d = decide(**fit, boards={"a": BoardLoad(5, 2)})  # 2 ready, room for 1
    assert d.grants == {} and "at target" in d.reason
    d = decide(**fit, max_running=5, boards={"a": BoardLoad(5, 1)})
    assert d.grants == {}
