"""Waiting for the first of several events."""

from __future__ import annotations

import asyncio

from proxy.dispatcher.waits import first_done


async def test_names_the_first_and_cancels_the_rest() -> None:
    """A wait left running after the loop moved on would pile up one per tick."""
    fired = asyncio.Event()
    never = asyncio.Event()
    fired.set()
    stray = asyncio.ensure_future(never.wait())
    assert await first_done({"fired": fired.wait(), "never": stray}) == "fired"
    await asyncio.sleep(0)
    assert stray.cancelled()


async def test_the_default_when_nothing_happens_in_time() -> None:
    """The tick's cadence: no event within the interval means the interval's own tick."""
    assert await first_done({"stop": asyncio.Event().wait()}, timeout=0.01,
                            default="interval") == "interval"
