"""A controllable TCP relay between the proxy and Redis, for fault injection.

- ``latency_s``: every chunk, each way, is delivered this much later (order kept);
- ``black_hole()``: connections stay open and new ones are accepted, but nothing is
  delivered either way until ``heal()``; then what was held is delivered, as TCP would after
  a partition heals (the harsh case: calls sent during the fault still run);
- ``reset()``: every open connection is reset (RST) at once.

It runs in the test's event loop, like the proxies the tests start.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class RedisRelay:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.latency_s = 0.0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.AbstractServer | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    def url(self, path: str = "/0") -> str:
        return f"redis://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def black_hole(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    @property
    def holed(self) -> bool:
        return not self._open.is_set()

    def reset(self) -> None:
        """RST every open connection now (SO_LINGER 0, then close)."""
        for a, b in list(self._links):
            for writer in (a, b):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                writer.transport.abort()
        self._links.clear()

    async def close(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()
        self.reset()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                redis_r, redis_w = await asyncio.open_connection(*self.target)
            except OSError:
                client_w.transport.abort()
                return
            link = (client_w, redis_w)
            self._links.add(link)
            pumps = [asyncio.create_task(self._pump(client_r, redis_w)),
                     asyncio.create_task(self._pump(redis_r, client_w))]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
                self._links.discard(link)
                for writer in link:
                    writer.transport.abort()
        except asyncio.CancelledError:
            pass  # close() ends the relay; asyncio would log a cancelled handler otherwise
        finally:
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                at, data = await queue.get()
                if not data:
                    return
                delay = at + self.latency_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._open.wait()
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                await queue.put((loop.time(), data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
