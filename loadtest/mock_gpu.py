"""One request on the mock's simulated GPU: its steps, stretched by the load at each moment
(``MockState.slowdown``), and its hold on the GPU from admission to its last bytes.

Split from ``mock_state`` (the engine's shared state) because this is what the route handlers
(``mock_generate``, ``mock_embeddings``) use per request; they only decide how many steps.
"""

from __future__ import annotations

import asyncio
import time
from typing import Self

from aiohttp import web

from loadtest.mock_state import MockState
from loadtest.mock_ttft import FirstToken


def check_alive(request: web.Request) -> None:
    """Raise if the client went away; covers servers that do not cancel handlers."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("client disconnected")


async def gpu_step(request: web.Request, state: MockState, base_s: float) -> None:
    """One GPU step: ``base_s`` stretched by the load at this moment."""
    if base_s > 0:
        await asyncio.sleep(base_s * state.slowdown())
        check_alive(request)


async def hold_until_gone(request: web.Request) -> None:
    """Hold the request until the client leaves (or the handler is cancelled)."""
    while True:
        await asyncio.sleep(0.02)
        check_alive(request)


class ActiveRequest:
    """One request's hold on the GPU; released exactly once."""

    __slots__ = ("state", "model", "open", "started_at", "slot", "first_token")

    def __init__(self, state: MockState, model: str) -> None:
        self.state = state
        self.model = model
        self.open = True
        self.slot = False
        self.first_token: FirstToken | None = None
        self.started_at = time.perf_counter()
        state.begin(model)

    async def first_step(self, request: web.Request, base_s: float) -> None:
        """The step to the first token, after the wait for an engine slot in queue mode;
        recorded in ``state.first_tokens`` (once per request)."""
        asked = time.perf_counter()
        if self.open and not self.slot:
            self.slot = await self.state.acquire_slot()
            check_alive(request)
        queued = time.perf_counter() - asked
        await gpu_step(request, self.state, base_s)
        if self.first_token is None:
            ttft = time.perf_counter() - self.started_at
            self.first_token = FirstToken(time.time() - ttft, self.model, ttft, queued)
            self.state.first_tokens.add(self.first_token)

    def finish(self, outcome: str) -> None:
        if self.slot:
            self.slot = False
            self.state.release_slot()
        if self.open:
            self.open = False
            self.state.end(self.model, outcome, time.perf_counter() - self.started_at)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        """A handler that left without finishing: a client gone is ``cancelled``, anything
        else ``failed`` (a finished request is already released and this does nothing)."""
        cancelled = kind is not None and issubclass(kind, (asyncio.CancelledError,
                                                             ConnectionResetError))
        self.finish("cancelled" if cancelled else "failed")

    def complete(self, prompt_tokens: int, n_tokens: int, finish_reason: str) -> None:
        """Count a finished generation; called before its last bytes go out."""
        state = self.state
        state.prompt_tokens += prompt_tokens
        state.completion_tokens += n_tokens
        state.finished_by_reason[finish_reason] += 1
        self.finish("completed")
