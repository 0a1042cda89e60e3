"""proxy/tasks.py: a cancelled background loop is waited for, and its cancellation stays inside."""

from __future__ import annotations

import asyncio

from proxy.tasks import cancel_and_wait


async def test_the_task_has_finished_its_cleanup_when_cancel_and_wait_returns() -> None:
    cleaned = asyncio.Event()

    async def loop() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits
            cleaned.set()

    task = asyncio.get_running_loop().create_task(loop())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled() and cleaned.is_set()


async def test_no_task_is_a_no_op() -> None:
    await cancel_and_wait(None)
