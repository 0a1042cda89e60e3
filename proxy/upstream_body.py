"""The body of one upstream answer as it arrives: queued for a reader, or pumped to a sink.

The connection (``proxy/upstream_connection.py``) feeds what its parser reads; one reader
takes it, in one of two ways:

- queued: ``read_now`` / ``next_chunk`` take everything that has arrived as one piece;
  reading pauses (``ReadPause.BUFFER``) past ``HIGH_WATER`` queued bytes and resumes when
  the queue is taken;
- pumped: once a relay calls ``pump``, each piece goes to its sink from the parser callback
  itself, so a streamed chunk reaches the client without a task switch; a sink that returns
  False pauses reading (``ReadPause.CONSUMER``) until the relay's ``wait_ready`` returns.

Either way the end (or the error that cut the body) is seen exactly once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from .flow_control import FlowControl, ReadPause

#: queued body bytes past which the connection stops reading
HIGH_WATER = 1 << 20


class ArrivingBody:
    """One exchange's body: what has arrived, whether it ended, and what cut it short."""

    __slots__ = ("_loop", "_flow", "_chunks", "_buffered", "_sink", "_end_delivered",
                 "_waiter", "complete", "error")

    def __init__(self, loop: asyncio.AbstractEventLoop, flow: FlowControl | None):
        self._loop = loop
        self._flow = flow
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._sink: Callable[[bytes, bool], bool] | None = None
        self._end_delivered = False
        self._waiter: asyncio.Future[None] | None = None
        #: the message ended (its last byte arrived, or it has no body)
        self.complete = False
        #: what failed the exchange before it ended (raised to the reader)
        self.error: Exception | None = None

    # -- the connection's side ---------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Body bytes from the parser."""
        sink = self._sink
        if sink is not None:  # pumping: straight to the relay, no queue, no wake-up
            if not sink(data, False):
                self._pause_for_sink()
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and self._flow is not None:
            self._flow.pause_reading(ReadPause.BUFFER)
        self._wake()

    def end(self) -> None:
        """The message is complete; a pumping relay ends its body in this same callback."""
        self.complete = True
        sink = self._sink
        if sink is not None:
            self._end_delivered = True
            sink(b"", True)
        self._wake()

    def fail(self, error: Exception) -> None:
        """The exchange failed: the reader gets ``error`` unless the body had already ended."""
        if self.error is None and not self.complete:
            self.error = error
        self._wake()

    @property
    def taken_whole(self) -> bool:
        """Ended without error and nothing left unread: the connection may be reused."""
        return self.complete and self.error is None and not self._chunks

    # -- the reader's side -------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Bytes (or the end) are waiting to be read or pumped."""
        return bool(self._chunks) or self.complete

    def read_now(self) -> bytes | None:
        """The whole body if it has all arrived already (the usual case for small answers)."""
        if not self.complete or self.error is not None:
            return None
        return self._take_chunks()

    async def next_chunk(self) -> bytes | None:
        while True:
            if self._chunks:
                # Hand over everything that has arrived: one write downstream, not one each.
                return self._take_chunks()
            if self.error is not None:
                raise self.error
            if self.complete:
                return None
            await self._wait()

    async def pump(self, sink: Callable[[bytes, bool], bool],
                   wait_ready: Callable[[], Awaitable[None]]) -> None:
        self._sink = sink
        flow = self._flow
        assert flow is not None
        try:
            if self._chunks or self.complete:  # what came with the head
                self._deliver()
            while True:
                if self.error is not None:
                    raise self.error
                if self.complete:
                    if not self._end_delivered:  # a body that ended with the connection
                        self._deliver()
                    return
                if flow.paused_for(ReadPause.CONSUMER):
                    await wait_ready()
                    flow.resume_reading(ReadPause.CONSUMER)
                    if self._chunks:
                        self._deliver()
                    continue
                await self._wait()
        finally:
            self._sink = None

    # -- internals ---------------------------------------------------------------------------

    def _take_chunks(self) -> bytes:
        """Everything queued, as one piece; reading resumes if the queue had paused it."""
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._flow is not None:
            self._flow.resume_reading(ReadPause.BUFFER)
        return data

    async def _wait(self) -> None:
        """Until the next body bytes, the end, an error, or a pause for the sink."""
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _deliver(self) -> None:
        """What arrived before pumping began, to the sink in one call (with the end when it
        came too: the relay writes its last chunk and its terminator in one write)."""
        assert self._sink is not None
        data = self._take_chunks()
        end = self.complete
        self._end_delivered = end
        if not self._sink(data, end) and not end:
            self._pause_for_sink()

    def _pause_for_sink(self) -> None:
        assert self._flow is not None
        if not self._flow.paused_for(ReadPause.CONSUMER):
            self._flow.pause_reading(ReadPause.CONSUMER)  # the pump waits, then resumes
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
