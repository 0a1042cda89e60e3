"""The boards' rules apart from the loop: selection, loads, the turning order, lock-outs."""

from __future__ import annotations

from proxy.dispatcher.boards import board_loads, locked_out, rotation, select_boards
from proxy.dispatcher.hermes_model import BoardCounts
from proxy.dispatcher.policy import BoardLoad, HoldReason


def _counts(**ready: int) -> dict[str, BoardCounts]:
    return {slug: BoardCounts(slug, {"running": 1, "ready": n}) for slug, n in ready.items()}


def test_named_boards_keep_their_order_and_report_the_missing() -> None:
    """A typo in --boards must be reported, not silently dispatch nothing."""
    counts = _counts(a=1, b=2)
    assert select_boards(None, counts) == (["a", "b"], [])
    assert select_boards(("b", "x", "a"), counts) == (["b", "a"], ["x"])


def test_only_boards_we_hold_offer_ready_tasks() -> None:
    """A board another companion holds counts its running tasks but must not get a grant."""
    loads = board_loads(None, _counts(a=3, b=2), {"a"})
    assert loads == {"a": BoardLoad(running=1, ready=3), "b": BoardLoad(running=1, ready=0)}


def test_the_order_of_grants_turns_each_tick() -> None:
    """A fixed order would always serve the same board last."""
    assert [rotation({"c", "a", "b"}, turn) for turn in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert rotation(set(), 5) == []


def test_locked_out_only_when_all_ready_work_is_elsewhere() -> None:
    """Holding while our own boards have ready tasks would starve them."""
    counts = _counts(a=0, b=4)
    hold = locked_out(counts, {"a"}, {"b"})
    assert hold is not None and hold.hold_reason is HoldReason.LOCKED_OUT and "4 ready" in hold.reason
    assert locked_out(_counts(a=1, b=4), {"a"}, {"b"}) is None
    assert locked_out(counts, {"a", "b"}, set()) is None
