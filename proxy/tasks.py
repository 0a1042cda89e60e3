"""Ending background tasks: one way to cancel a loop and wait until it has stopped.

Why: every background loop (engine probes, the capacity lease, the dispatcher's event
follower) stops the same way; waiting for the cancelled task matters so that nothing it owns
(a session, a lease) is still in use when its owner closes.
"""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait for it to finish; its cancellation is not raised."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
