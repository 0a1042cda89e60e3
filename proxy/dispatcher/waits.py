"""Waiting for the first of several events, with no wait left running afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any


async def first_done(waits: Mapping[str, Awaitable[Any]], timeout: float | None = None,
                     default: str = "") -> str:
    """The name of the first of ``waits`` to finish, or ``default`` if none did within
    ``timeout``; the others are cancelled (a stray wait would outlive the loop)."""
    tasks = {asyncio.ensure_future(wait): name for name, wait in waits.items()}
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    for task in done:
        return tasks[task]
    return default
