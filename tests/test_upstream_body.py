"""An upstream answer's body as it arrives: taken in one piece, its end and its error once.

The pumped path and read pausing run against real sockets in ``test_upstream_bounds.py`` and
``test_upstream_pool.py``; these pin down the queue's own guarantees.
"""

from __future__ import annotations

import asyncio

import pytest

from proxy.errors import UpstreamError
from proxy.upstream_body import ArrivingBody


async def test_what_arrived_is_handed_over_as_one_piece() -> None:
    body = ArrivingBody(asyncio.get_running_loop(), None)
    assert not body.ready and body.read_now() is None
    for part in (b"ab", b"cd", b"ef"):
        body.feed(part)
    assert body.ready and body.read_now() is None  # not complete yet: no whole body
    assert await body.next_chunk() == b"abcdef"
    body.end()
    assert await body.next_chunk() is None
    assert body.taken_whole


async def test_a_reader_waiting_is_woken_by_the_end() -> None:
    body = ArrivingBody(asyncio.get_running_loop(), None)
    reader = asyncio.ensure_future(body.next_chunk())
    await asyncio.sleep(0)
    body.feed(b"last")
    body.end()
    assert await asyncio.wait_for(reader, 5) == b"last"
    assert await body.next_chunk() is None


async def test_an_error_before_the_end_reaches_the_reader() -> None:
    """Hazard: a body cut by a reset read as complete would be relayed (and pooled) as if
    the answer were whole."""
    body = ArrivingBody(asyncio.get_running_loop(), None)
    body.feed(b"half")
    reader = asyncio.ensure_future(body.next_chunk())
    body.fail(UpstreamError("reset mid-response"))
    assert await reader == b"half"  # what arrived still comes first
    with pytest.raises(UpstreamError, match="reset mid-response"):
        await body.next_chunk()
    assert not body.taken_whole


async def test_an_error_after_the_end_changes_nothing() -> None:
    body = ArrivingBody(asyncio.get_running_loop(), None)
    body.feed(b"whole")
    body.end()
    body.fail(UpstreamError("closed after the answer"))
    assert body.error is None
    assert body.read_now() == b"whole"
    assert body.taken_whole


async def test_unread_bytes_keep_the_connection_from_the_pool() -> None:
    body = ArrivingBody(asyncio.get_running_loop(), None)
    body.feed(b"unread")
    body.end()
    assert not body.taken_whole
