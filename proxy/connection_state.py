"""The life of one client connection of the front server, as data (after h11's ``_state``).

A connection (``proxy/connection.py``) moves through ``ConnState``; ``NEXT_STATES`` lists
every move allowed, and :func:`check_move` refuses any other (a bug, not a client error)::

    IDLE --head--> ACTIVE --answered, nothing parsed ahead--> IDLE
    ACTIVE --draining, Upgrade--> MUST_CLOSE   (finish the message being read and the
                                                 answers due, take no new request, close)
    IDLE | ACTIVE | MUST_CLOSE --unreadable input--> ERROR  (read nothing more; answer what
                                                 was parsed before it, then its error; close)
    any --> CLOSED
"""

from __future__ import annotations

import enum


class ConnState(enum.Enum):
    """Where a client connection is in its life (see the module docstring)."""

    __hash__ = object.__hash__  # members are singletons; C-level hashing for the table

    IDLE = "idle"  # waiting for a request head; the idle timer runs
    ACTIVE = "active"  # answering a request (others may wait, parsed ahead)
    MUST_CLOSE = "must_close"  # finish the message being read and the answers due, then close
    ERROR = "error"  # input unreadable: read nothing more, answer what is due, then close
    CLOSED = "closed"  # closed by us or by the client


NEXT_STATES: dict[ConnState, frozenset[ConnState]] = {
    ConnState.IDLE: frozenset({ConnState.ACTIVE, ConnState.ERROR, ConnState.CLOSED}),
    ConnState.ACTIVE: frozenset({ConnState.IDLE, ConnState.ACTIVE, ConnState.MUST_CLOSE,
                                 ConnState.ERROR, ConnState.CLOSED}),
    ConnState.MUST_CLOSE: frozenset({ConnState.MUST_CLOSE, ConnState.ERROR, ConnState.CLOSED}),
    ConnState.ERROR: frozenset({ConnState.ERROR, ConnState.CLOSED}),
    ConnState.CLOSED: frozenset({ConnState.CLOSED}),
}
READING = (ConnState.IDLE, ConnState.ACTIVE)


def check_move(state: ConnState, to: ConnState) -> None:
    """Raise RuntimeError unless ``state -> to`` is in ``NEXT_STATES``."""
    if to not in NEXT_STATES[state]:
        raise RuntimeError(f"connection state {state.name} -> {to.name}")
