"""One way to run the kit's event loops: uvloop when installed, else asyncio's default."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``uvloop.new_event_loop`` when uvloop is importable (for ``asyncio.Runner``)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
