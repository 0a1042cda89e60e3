"""Script calls sent in call order, many per round trip (auto-pipelining).

Why: concurrent calls on a connection pool reach Redis in any order, so two requests arriving
at one host in order A, B could be queued B, A. Here calls made while a batch is on the wire
wait for it and go out together in the next one (one write, one read), in the order they
were made. Under load that also cuts round trips and client CPU per call; an idle host sends
each call at once, alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: most calls per round trip (bounds one reply's size and Redis's time on one batch)
MAX_BATCH = 256
#: a batch whose connection drops is sent again this many times, after a growing pause
RETRIES = 3
RETRY_BASE_S = 0.05
RETRY_CAP_S = 0.25

_Call = tuple[AsyncScript, Sequence[str], Sequence[Any], "asyncio.Future[Any]"]


class ScriptPipeline:
    """Runs script calls in order through one pipeline at a time."""

    def __init__(self, client: Redis):
        self._client = client
        self._pending: list[_Call] = []
        self._flushing = False
        #: packed ``EVALSHA sha numkeys keys`` per (script sha, key list)
        self._prefixes: dict[tuple[str, int], bytes] = {}

    async def call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Queue one call; a call whose caller is cancelled still runs (scripts are idempotent
        and the caller's cleanup, queued after it, undoes it)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)  # a cancelled caller never reads it
        self._pending.append((script, keys, args, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                await self._send(batch)
        finally:
            self._flushing = False

    async def _send(self, batch: list[_Call]) -> None:
        try:
            await self._execute(batch)
        except BaseException as exc:  # connection lost (after retries), or cancelled
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else
                                         ConnectionError("pipeline cancelled"))
            if not isinstance(exc, Exception):
                raise

    async def _execute(self, batch: list[_Call]) -> None:
        # The commands are packed here, not by redis-py: a script call repeats the same
        # EVALSHA, sha and keys every time, so that prefix is packed once per script.
        payload = b"".join(self._pack(script, keys, args) for script, keys, args, _ in batch)
        results = await self._roundtrip(payload, len(batch))
        missing = [call for call, result in zip(batch, results, strict=True)
                   if isinstance(result, NoScriptError)]
        if missing:  # Redis restarted and lost its script cache: load, then resend in order
            for script in {id(call[0]): call[0] for call in missing}.values():
                script.sha = await self._client.script_load(script.script)
                self._prefixes.clear()
            await self._execute(missing)
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done() or isinstance(result, NoScriptError):
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _pack(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        """``EVALSHA sha numkeys keys... args...`` in RESP."""
        cache_key = (script.sha, id(keys))
        prefix = self._prefixes.get(cache_key)
        if prefix is None:
            prefix = self._prefixes[cache_key] = _pack_prefix(script, keys)
        parts = [b"*%d\r\n" % (3 + len(keys) + len(args)), prefix]
        parts.extend(_bulk(arg if isinstance(arg, str | bytes) else str(arg)) for arg in args)
        return b"".join(parts)

    async def _roundtrip(self, payload: bytes, count: int) -> list[Any]:
        """Write every command at once, read every reply; retried whole on a dropped
        connection (every script is idempotent per request id)."""
        pool = self._client.connection_pool
        attempt = 0
        while True:
            connection = await pool.get_connection()
            try:
                await connection.send_packed_command(payload, check_health=False)
                results = []
                for _ in range(count):
                    try:
                        results.append(await connection.read_response())
                    except ResponseError as exc:
                        results.append(exc)
                return results
            except (RedisConnectionError, RedisTimeoutError, OSError):
                await connection.disconnect()
                attempt += 1
                if attempt > RETRIES:
                    raise
                await asyncio.sleep(min(RETRY_CAP_S, RETRY_BASE_S * 2 ** attempt))
            except BaseException:
                await connection.disconnect()
                raise
            finally:
                await pool.release(connection)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _bulk(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _pack_prefix(script: AsyncScript, keys: Sequence[str]) -> bytes:
    """``EVALSHA sha numkeys keys...`` in RESP: the part every call of a script repeats."""
    return b"".join([_bulk("EVALSHA"), _bulk(script.sha), _bulk(str(len(keys))),
                     *(_bulk(key) for key in keys)])
