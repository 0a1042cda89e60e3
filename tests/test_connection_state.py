"""The front connection's life as data (``proxy/connection_state.py``)."""

from __future__ import annotations

import pytest

from proxy.connection_state import NEXT_STATES, READING, ConnState, check_move


def test_every_state_can_close_and_closed_is_final() -> None:
    """A connection in any state must be closable; nothing leaves CLOSED (no revival)."""
    assert set(NEXT_STATES) == set(ConnState)
    assert all(ConnState.CLOSED in allowed for allowed in NEXT_STATES.values())
    assert NEXT_STATES[ConnState.CLOSED] == {ConnState.CLOSED}


def test_no_way_back_to_reading_once_closing() -> None:
    """After MUST_CLOSE or ERROR no new request is taken: IDLE and ACTIVE are out of reach."""
    for state in (ConnState.MUST_CLOSE, ConnState.ERROR, ConnState.CLOSED):
        assert not NEXT_STATES[state] & set(READING)


def test_check_move_refuses_a_move_outside_the_table() -> None:
    check_move(ConnState.IDLE, ConnState.ACTIVE)
    with pytest.raises(RuntimeError, match="ERROR -> IDLE"):
        check_move(ConnState.ERROR, ConnState.IDLE)
