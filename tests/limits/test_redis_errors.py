"""Error replies mean the same on both stacks: the hot-path pipeline raises the exception
class redis-py raises for the same reply, and every one of them degrades the store with a
reason instead of reaching a client as a 500."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy.limits.redis_connect import Endpoint
from proxy.limits.redis_errors import STORE_ERRORS, StoreFault, classify
from proxy.limits.redis_pipeline import ScriptPipeline

#: error replies an operator meets (failover, restart, memory, ACL, cluster), and the reason
REPLIES = {
    "OOM command not allowed when used memory > 'maxmemory'.": StoreFault.OOM,
    "NOPERM User u has no permissions to run the 'evalsha' command": StoreFault.NOPERM,
    "READONLY You can't write against a read only replica.": StoreFault.READONLY,
    "LOADING Redis is loading the dataset in memory": StoreFault.LOADING,
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.":
        StoreFault.MASTERDOWN,
    "MOVED 3999 127.0.0.1:6381": StoreFault.CLUSTER,
    "TRYAGAIN Multiple keys request during rehashing of slot": StoreFault.CLUSTER,
    "CLUSTERDOWN The cluster is down": StoreFault.CLUSTER,
    "NOAUTH Authentication required.": StoreFault.AUTH,
    "WRONGPASS invalid username-password pair or user is disabled.": StoreFault.AUTH,
    "ERR max number of clients reached": StoreFault.UNREACHABLE,
    "BUSY Redis is busy running a script.": StoreFault.ERROR,
}


class CannedRedis:
    """A raw-socket server: handshake commands get +OK, every other command one error reply."""

    def __init__(self) -> None:
        self.reply = b"-ERR nothing set\r\n"
        self.server: asyncio.AbstractServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                count = int(line[1:])
                parts = []
                for _ in range(count):
                    size = int((await reader.readline())[1:])
                    parts.append((await reader.readexactly(size + 2))[:-2].upper())
                handshake = parts[0] in (b"CLIENT", b"AUTH", b"SELECT", b"HELLO")
                writer.write(b"+OK\r\n" if handshake else self.reply)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def canned() -> AsyncIterator[CannedRedis]:
    server = CannedRedis()
    await server.start()
    yield server
    assert server.server is not None
    server.server.close()


@pytest.mark.parametrize("message", list(REPLIES))
async def test_both_stacks_raise_the_same_class(canned: CannedRedis, message: str):
    """Hazard: the pipeline turned -OOM, -READONLY, -LOADING, -MOVED into a plain
    ResponseError that the store did not count as 'unavailable': clients got a 500."""
    canned.reply = f"-{message}\r\n".encode()
    client = Redis(host="127.0.0.1", port=canned.port, protocol=2, socket_timeout=2)
    with pytest.raises(RedisError) as by_redis_py:
        await client.execute_command("EVALSHA", "0" * 40, "0")
    await client.aclose()
    pipe = ScriptPipeline(Endpoint("127.0.0.1", canned.port, None, None, None, None, 0, None),
                          timeout_s=2.0)
    try:
        with pytest.raises(RedisError) as by_pipeline:
            await pipe.execute("EVALSHA", "0" * 40, "0")
    finally:
        await pipe.close()
    assert type(by_pipeline.value) is type(by_redis_py.value)
    assert str(by_pipeline.value) == str(by_redis_py.value)
    assert isinstance(by_pipeline.value, STORE_ERRORS)
    assert classify(by_pipeline.value) is REPLIES[message]


async def test_a_silent_redis_times_out_within_the_deadline(canned: CannedRedis):
    """Hazard: the pipeline's calls had no deadline; a black hole hung requests for good."""
    canned.reply = b""  # never answers
    pipe = ScriptPipeline(Endpoint("127.0.0.1", canned.port, None, None, None, None, 0, None),
                          timeout_s=0.3)
    started = asyncio.get_running_loop().time()
    try:
        with pytest.raises(RedisError) as raised:
            await pipe.execute("PING")
    finally:
        await pipe.close()
    assert classify(raised.value) is StoreFault.TIMEOUT
    assert asyncio.get_running_loop().time() - started < 0.3 + 1.0
