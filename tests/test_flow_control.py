"""proxy/flow_control.py on a real loopback transport."""

from __future__ import annotations

import asyncio

import pytest

from proxy.flow_control import FlowControl, ReadPause


class _Peer(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flow = FlowControl(self.transport)

    def pause_writing(self) -> None:
        assert self.flow is not None
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        assert self.flow is not None
        self.flow.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.flow is not None
        self.flow.connection_lost()


async def _pair() -> tuple[_Peer, asyncio.Server, asyncio.StreamWriter, asyncio.StreamReader]:
    loop = asyncio.get_running_loop()
    peer = _Peer()
    server = await loop.create_server(lambda: peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(200):
        if peer.flow is not None:
            break
        await asyncio.sleep(0.01)
    return peer, server, writer, reader


async def test_reading_resumes_only_when_the_last_reason_clears():
    """Hazard: one reason's end (an answer written) resuming reading that another reason (a
    client not reading its answers) still needs paused."""
    peer, server, writer, _ = await _pair()
    try:
        assert peer.transport is not None and peer.flow is not None
        flow = peer.flow
        flow.pause_reading(ReadPause.PIPELINE)
        flow.pause_reading(ReadPause.OUTPUT)
        flow.pause_reading(ReadPause.OUTPUT)  # idempotent
        assert not peer.transport.is_reading()
        flow.resume_reading(ReadPause.PIPELINE)
        assert not peer.transport.is_reading() and flow.paused_for(ReadPause.OUTPUT)
        flow.resume_reading(ReadPause.OUTPUT)
        assert peer.transport.is_reading() and not flow.read_paused
        flow.resume_reading(ReadPause.OUTPUT)  # not paused: a no-op
        assert peer.transport.is_reading()
    finally:
        writer.close()
        server.close()


async def test_drain_waits_for_the_reader_and_fails_when_the_peer_goes():
    """Hazard: a writer waiting on a client that never reads is never woken (a task and its
    buffers held for good) when the client disconnects."""
    peer, server, writer, reader = await _pair()
    try:
        assert peer.transport is not None and peer.flow is not None
        flow = peer.flow
        await flow.drain()  # not paused: returns at once
        while not flow.write_paused:
            peer.transport.write(b"x" * 65536)
        peer.transport.write(b"x" * (16 << 20))  # more than the socket buffers hold
        waiters = [asyncio.create_task(flow.drain()) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiters)
        while not all(w.done() for w in waiters):  # taking output lets it drain
            await reader.read(1 << 20)
        for w in waiters:
            await w
        while not flow.write_paused:
            peer.transport.write(b"x" * 65536)
        waiting = asyncio.create_task(flow.drain())
        await asyncio.sleep(0.02)
        writer.transport.abort()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(ConnectionResetError):
            await flow.drain()
    finally:
        writer.close()
        server.close()
