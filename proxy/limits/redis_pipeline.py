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
from redis.exceptions import NoScriptError

#: most calls per round trip (bounds one reply's size and Redis's time on one batch)
MAX_BATCH = 256

_Call = tuple[AsyncScript, Sequence[str], Sequence[Any], "asyncio.Future[Any]"]


class ScriptPipeline:
    """Runs script calls in order through one pipeline at a time."""

    def __init__(self, client: Redis):
        self._client = client
        self._pending: list[_Call] = []
        self._flushing = False

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
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        results = await pipe.execute(raise_on_error=False)
        missing = [call for call, result in zip(batch, results, strict=True)
                   if isinstance(result, NoScriptError)]
        if missing:  # Redis restarted and lost its script cache: load, then resend in order
            for script in {id(call[0]): call[0] for call in missing}.values():
                script.sha = await self._client.script_load(script.script)
            await self._execute(missing)
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done() or isinstance(result, NoScriptError):
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
