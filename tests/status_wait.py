"""Waiting on an in-process proxy's status document instead of sleeping a guessed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def wait_for_status(proxy: Any, predicate: Callable[[dict[str, Any]], bool],
                          timeout: float = 5.0) -> dict[str, Any]:
    """The first ``/throttle/status`` document of ``proxy`` (a ``make_proxy`` result) that
    satisfies ``predicate``; fails the test with the last one after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        doc = await proxy.proxy.status_json()
        if predicate(doc):
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"status never matched: {doc}")
        await asyncio.sleep(0.01)
