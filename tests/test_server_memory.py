"""A client that pipelines requests and never reads its answers cannot grow the proxy's memory.

The proxy runs as its own process (``python -m proxy serve``) so its resident set size, read
from ``/proc``, is its own. Each attack runs a few seconds; the bound (+50 MB over the idle
RSS) is far above what the bounded server holds (its socket buffers, one answer) and far below
what the unbounded one reached (1.7 GB for 401s, 686 MB for 1 MB answers), so a loaded machine
cannot make it flaky.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from loadtest.processes import free_port
from tests.cli_proxy import kill_if_running, start_cli_proxy

ATTACK_S = 3.0
GROWTH_BOUND = 50 * 1024 * 1024
KEY = "memory-test-key"
ONE_MB = 1 << 20


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class MegabyteUpstream:
    """A raw-socket upstream answering every request with a 1 MB body, keep-alive."""

    def __init__(self) -> None:
        self.answered = 0
        self.server: asyncio.Server | None = None
        self.body = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n" \
            b"Content-Length: %d\r\n\r\n" % ONE_MB + b"m" * ONE_MB

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                writer.write(self.body)
                self.answered += 1
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def proxy_process(tmp_path):
    """``await proxy_process(upstream_url)`` -> (pid, proxy url); killed afterwards."""
    started: list[asyncio.subprocess.Process] = []

    async def start(upstream_url: str) -> tuple[int, str]:
        config = {
            "listen": f"127.0.0.1:{free_port()}",
            "upstreams": {"up": {"url": upstream_url}},
            "models": {"m": {"upstreams": ["up"], "max_in_flight": 4}},
            "clients": {"w": {"key": KEY}},
        }
        process, url = await start_cli_proxy(config, tmp_path)
        started.append(process)
        return process.pid, url

    yield start
    for process in started:
        await kill_if_running(process)


async def idle_rss(pid: int, url: str, request: bytes) -> int:
    """RSS once the proxy has served a few of the attack's requests normally."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    for _ in range(3):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
    await asyncio.sleep(0.2)
    return rss_bytes(pid)


async def attack(url: str, pid: int, payload: bytes, repeat: bool) -> tuple[int, int]:
    """Write ``payload`` (again and again when ``repeat``) on one connection for ATTACK_S,
    never reading; returns (bytes the proxy took, highest RSS seen)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the client reads nothing
    sock.setblocking(False)
    sent = 0
    peak = 0
    pending = memoryview(payload)
    deadline = time.monotonic() + ATTACK_S
    try:
        while time.monotonic() < deadline:
            try:
                while pending:
                    pending = pending[sock.send(pending):]
                    sent += 1
                if repeat:
                    pending = memoryview(payload)
            except BlockingIOError:
                pass
            peak = max(peak, rss_bytes(pid))
            await asyncio.sleep(0.005 if repeat else 0.05)
    finally:
        sock.close()
    return sent, peak


async def served_after(url: str) -> int:
    """Another client is still answered (the attack held one connection, not the proxy)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return int(response.split(b" ", 2)[1])


async def test_pipelined_401s_never_read_keep_memory_flat(proxy_process, mock_llm):
    """Hazard: unauthenticated requests pipelined without reading the 401s were parsed and
    answered without bound, their answers piling up in the write buffer: 1,631,600 of them
    took the proxy from 45 MB to 1.7 GB in 11 s."""
    mock = await mock_llm()
    pid, url = await proxy_process(mock.url)
    one = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    before = await idle_rss(pid, url, one)
    sent, peak = await attack(url, pid, one * 2000, repeat=True)
    print(f"401 flood: RSS {before / 2**20:.1f} MB idle, peak {peak / 2**20:.1f} MB, {sent} sends")
    assert peak - before < GROWTH_BOUND, (f"RSS {before >> 20} MB idle -> {peak >> 20} MB "
                                          f"under attack ({sent} sends)")
    assert await served_after(url) == 401


async def test_pipelined_megabyte_answers_never_read_keep_memory_flat(proxy_process):
    """Hazard: 600 pipelined requests whose answers are 1 MB each, never read: every answer
    was fetched from the upstream and queued in the write buffer (686 MB)."""
    upstream = MegabyteUpstream()
    try:
        pid, url = await proxy_process(await upstream.start())
        one = b"GET /v1/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + \
            b"\r\n\r\n"
        before = await idle_rss(pid, url, one)
        answered_before = upstream.answered
        _, peak = await attack(url, pid, one * 600, repeat=False)
        print(f"1 MB answers: RSS {before / 2**20:.1f} MB idle, peak {peak / 2**20:.1f} MB, "
              f"{upstream.answered - answered_before} answers fetched")
        assert peak - before < GROWTH_BOUND, (
            f"RSS {before >> 20} MB idle -> {peak >> 20} MB under attack; "
            f"{upstream.answered - answered_before} answers fetched")
        assert upstream.answered - answered_before < 600
    finally:
        await upstream.stop()
