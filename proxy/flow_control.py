"""Backpressure for one asyncio transport, both ways: the one helper the front server
(``proxy/server.py``) and the upstream client use.

Writing: asyncio calls the protocol's ``pause_writing`` once the transport's unsent output is
above its high-water mark and ``resume_writing`` once it is back under the low one; the
protocol forwards both here, and a writer ``await``s ``drain()`` before producing more.

Reading: a protocol stops reading for several independent reasons (the server: requests parsed
ahead, output the client has not taken; the upstream client: body bytes queued unread, a
consumer that is full). Each reason is a ``ReadPause`` flag; the transport is paused while any
flag is set and resumed when the last one clears, so one reason's end cannot resume reading
that another still needs paused.
"""

from __future__ import annotations

import asyncio
import enum


class ReadPause(enum.Flag):
    """Why reading is paused (several may hold at once)."""

    NONE = 0
    #: server: requests parsed ahead of the one being answered reached the pipelining depth
    PIPELINE = enum.auto()
    #: server: unsent output is above the high-water mark (a client that does not read)
    OUTPUT = enum.auto()
    #: upstream client: body bytes queued and not yet taken
    BUFFER = enum.auto()
    #: upstream client: the consumer of a relayed body is full
    CONSUMER = enum.auto()


class FlowControl:
    """Read pausing by reason, and ``drain()`` for writers; one per connection.

    Guarantees: ``pause_reading``/``resume_reading`` are idempotent per reason; the transport
    sees one ``pause_reading()`` when the first reason appears and one ``resume_reading()``
    when the last one clears; ``drain()`` returns at once unless writing is paused, and raises
    ``ConnectionResetError`` once the connection is lost (also for a writer already waiting).
    """

    __slots__ = ("_reasons", "_transport", "_waiter", "lost", "write_paused")

    def __init__(self, transport: asyncio.Transport):
        self._transport = transport
        self._reasons = ReadPause.NONE
        self._waiter: asyncio.Future[None] | None = None
        #: the transport's output is above its high-water mark
        self.write_paused = False
        #: the connection is gone (``connection_lost`` was called)
        self.lost = False

    # -- reading -------------------------------------------------------------------------------

    @property
    def read_paused(self) -> bool:
        return bool(self._reasons)

    def paused_for(self, reason: ReadPause) -> bool:
        return bool(self._reasons & reason)

    def pause_reading(self, reason: ReadPause) -> None:
        if self._reasons & reason:
            return
        was_reading = not self._reasons
        self._reasons |= reason
        if was_reading and not self.lost:
            self._transport.pause_reading()

    def resume_reading(self, reason: ReadPause) -> None:
        if not self._reasons & reason:
            return
        self._reasons &= ~reason
        if not self._reasons and not self.lost:
            self._transport.resume_reading()

    # -- writing -------------------------------------------------------------------------------

    def pause_writing(self) -> None:
        """From the protocol's ``pause_writing``."""
        self.write_paused = True

    def resume_writing(self) -> None:
        """From the protocol's ``resume_writing``: wakes a writer waiting in ``drain``."""
        self.write_paused = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        """Until the output is below the low-water mark; ConnectionResetError once lost."""
        if self.lost:
            raise ConnectionResetError("the connection is closed")
        if not self.write_paused:
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(waiter)  # several writers may wait on one future

    def connection_lost(self) -> None:
        """From the protocol's ``connection_lost``: fails a waiting writer."""
        self.lost = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the connection is closed"))
            waiter.exception()  # retrieved: no "never retrieved" warning when nobody waits
