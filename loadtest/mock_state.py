"""Configuration, GPU model and bookkeeping of the mock LLM server.

Theory of operation: every inference request (chat, completion, embedding) is *active* from
the moment its body is parsed until just before its last bytes are written. A GPU serves up to
``batch_size`` active requests at full speed; past that every step slows for everyone
(:meth:`MockState.slowdown`), so an uncapped flood really loses goodput, as on a real server.

The engine's state lives here: the contention model (:meth:`MockState.slowdown`), the engine
queue of ``max_running`` slots and the counters. One request's side of it, a GPU step
stretched by the slowdown and the request's hold on the GPU, is ``mock_gpu``; the route
handlers (``mock_generate``, ``mock_embeddings``) only decide how many steps a request takes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from loadtest.mock_ttft import FirstTokenLog, nearest_rank

#: completed requests whose service time is kept (about 0.8 MB at most)
SERVICE_TIMES_KEPT = 100_000


@dataclass
class MockLLMConfig:
    """Knobs of the mock; mutable at runtime (handlers read it on every request)."""

    #: requests served at full speed; past it every step slows down
    batch_size: int = 4
    #: time to first token at or below ``batch_size`` active requests
    ttft_s: float = 0.05
    #: time per further output token at or below ``batch_size``
    tpot_s: float = 0.01
    #: tokens generated when the request does not ask for fewer
    output_tokens: int = 16
    #: extra slowdown per unit of overload (0 = only proportional sharing)
    thrash: float = 0.5
    embedding_dim: int = 8
    #: ids listed by /v1/models; any requested model is still served
    models: list[str] = field(default_factory=lambda: ["mock-model"])
    #: answer chats offering this tool (and no tool result yet) with a call to it, e.g.
    #: "kanban_complete"; per request also by the x-mock-tool-call header (mock_tools.py)
    tool_call: str | None = None
    #: how many recent requests (method, path, headers) are kept for assertions
    recent_requests: int = 64
    #: introspection format: vllm, llamacpp or ollama (loadtest/mock_engines.py)
    engine: str = "vllm"
    #: requests the engine runs at once, as vLLM's ``max_num_seqs`` or llama.cpp's slots: the
    #: rest wait FIFO in the engine before their first token, reported as waiting/deferred.
    #: 0 = no engine queue: every request runs at once and the batch only slows down past B
    max_running: int = 0

    def update(self, values: dict[str, Any]) -> None:
        """Set known fields from a JSON object (POST /mock/config); unknown keys are errors."""
        known = {f.name: f for f in fields(self)}
        for key, value in values.items():
            if key not in known:
                raise KeyError(key)
            if key == "models":
                value = [str(m) for m in value]
            elif isinstance(getattr(self, key), int) and not isinstance(value, bool):
                value = type(getattr(self, key))(value)
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class RecordedRequest:
    """One request as the mock received it (headers are case-insensitive)."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    time: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "time": self.time,
        }


class MockState:
    """Live counters of one mock server; reachable as ``app[MOCK_STATE]``.

    ``in_flight`` never counts a request whose response end a client could already have seen:
    :meth:`end` runs before the last bytes are written.
    """

    __slots__ = (
        "config",
        "in_flight",
        "peak",
        "in_flight_by_model",
        "peak_by_model",
        "requests_by_path",
        "started",
        "completed",
        "cancelled",
        "failed",
        "finished_by_reason",
        "prompt_tokens",
        "completion_tokens",
        "recent",
        "service_times",
        "first_tokens",
        "running",
        "_queue",
        "_ids",
    )

    def __init__(self, config: MockLLMConfig) -> None:
        #: the live configuration (shared with the server handle)
        self.config = config
        #: inference requests active now, all models together
        self.in_flight = 0
        #: highest ``in_flight`` since start or :meth:`reset`
        self.peak = 0
        self.in_flight_by_model: dict[str, int] = {}
        self.peak_by_model: dict[str, int] = {}
        #: every request received, by path (introspection routes under /mock/ excluded)
        self.requests_by_path: Counter[str] = Counter()
        #: inference requests admitted / finished normally / client gone / fault-aborted
        self.started = 0
        self.completed = 0
        self.cancelled = 0
        self.failed = 0
        self.finished_by_reason: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        #: most recent requests, oldest first
        self.recent: deque[RecordedRequest] = deque(maxlen=max(1, config.recent_requests))
        #: seconds each completed request was active (its service time, no client-side queue)
        self.service_times: deque[float] = deque(maxlen=SERVICE_TIMES_KEPT)
        #: each request's arrival-to-first-token and slot wait, as the engine saw them
        self.first_tokens = FirstTokenLog()
        #: requests holding one of the ``max_running`` engine slots (queue mode only)
        self.running = 0
        #: requests waiting in the engine's own queue for a slot, oldest first
        self._queue: deque[asyncio.Future[None]] = deque()
        self._ids = 0

    # -- GPU model -------------------------------------------------------------------------

    @property
    def queued_mode(self) -> bool:
        return self.config.max_running > 0

    def slowdown(self) -> float:
        """Factor applied to the next step: 1 up to the batch size, super-linear past it.

        In queue mode only the requests holding a slot share the GPU; the queue costs nothing.
        """
        b = self.config.batch_size
        active = self.running if self.queued_mode else self.in_flight
        if active <= b or b <= 0:
            return 1.0
        r = active / b
        return r * (1.0 + self.config.thrash * (r - 1.0))

    @property
    def waiting(self) -> int:
        """What a vLLM server reports as queued: the engine's queue in queue mode, else the
        active requests past the batch."""
        if self.queued_mode:
            return sum(1 for f in self._queue if not f.done())
        return max(0, self.in_flight - self.config.batch_size)

    @property
    def running_now(self) -> int:
        """What a vLLM server reports as running (llama.cpp: busy slots)."""
        if self.queued_mode:
            return self.running
        return min(self.in_flight, self.config.batch_size)

    @property
    def slots(self) -> int:
        """Slots a llama.cpp server would list: ``max_running`` in queue mode, else B."""
        return self.config.max_running if self.queued_mode else self.config.batch_size

    async def acquire_slot(self) -> bool:
        """Wait FIFO for an engine slot (queue mode); True when one is now held."""
        if not self.queued_mode:
            return False
        if self.running < self.config.max_running and not self.waiting:
            self.running += 1
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release_slot()  # granted just as the client left: pass it on
            raise
        finally:
            if waiter in self._queue:
                self._queue.remove(waiter)
        return True

    def release_slot(self) -> None:
        """Free a slot; the oldest waiter still there takes it (``running`` unchanged)
        unless ``max_running`` was lowered meanwhile or queue mode turned off (then all go)."""
        if not self.queued_mode:
            for waiter in self._queue:
                if not waiter.done():
                    waiter.set_result(None)
                    self.running += 1
            self._queue.clear()
        while self._queue and self.running <= self.config.max_running:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1

    # -- request lifecycle -----------------------------------------------------------------

    def record(self, method: str, path: str, headers: CIMultiDictProxy[str]) -> None:
        self.requests_by_path[path] += 1
        if self.recent.maxlen != max(1, self.config.recent_requests):
            self.recent = deque(self.recent, maxlen=max(1, self.config.recent_requests))
        self.recent.append(RecordedRequest(method, path, headers, time.time()))

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def begin(self, model: str) -> None:
        self.started += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        n = self.in_flight_by_model.get(model, 0) + 1
        self.in_flight_by_model[model] = n
        if n > self.peak_by_model.get(model, 0):
            self.peak_by_model[model] = n

    def end(self, model: str, outcome: str, duration: float | None = None) -> None:
        """Release one active request; ``outcome`` is completed, cancelled or failed.

        ``duration`` (seconds active) of a completed request is kept for ``service_s``.
        """
        self.in_flight -= 1
        n = self.in_flight_by_model.get(model, 0) - 1
        if n > 0:
            self.in_flight_by_model[model] = n
        else:
            self.in_flight_by_model.pop(model, None)
        if outcome == "completed":
            self.completed += 1
            if duration is not None:
                self.service_times.append(duration)
        elif outcome == "cancelled":
            self.cancelled += 1
        else:
            self.failed += 1

    def reset(self) -> None:
        """Zero counters; peaks restart from what is in flight now (live requests stay)."""
        self.peak = self.in_flight
        self.peak_by_model = dict(self.in_flight_by_model)
        self.requests_by_path.clear()
        self.started = self.completed = self.cancelled = self.failed = 0
        self.finished_by_reason.clear()
        self.prompt_tokens = self.completion_tokens = 0
        self.recent.clear()
        self.service_times.clear()
        self.first_tokens.clear()

    # -- introspection ---------------------------------------------------------------------

    @property
    def last_request(self) -> RecordedRequest | None:
        return self.recent[-1] if self.recent else None

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """Recent requests to one path, oldest first."""
        return [r for r in self.recent if r.path == path]

    async def wait_until(
        self, predicate: Callable[[MockState], bool], timeout: float = 5.0
    ) -> None:
        """Poll ``predicate(state)`` until true; polling keeps the hot path free of events."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"mock state condition not met within {timeout}s")
            await asyncio.sleep(0.005)

    def service_summary(self) -> dict[str, float | int | None]:
        """Percentiles of the kept service times (nearest rank; None when empty)."""
        data = sorted(self.service_times)
        n = len(data)
        return {
            "count": n,
            "p50": nearest_rank(data, 50),
            "p90": nearest_rank(data, 90),
            "p99": nearest_rank(data, 99),
            "max": data[-1] if n else None,
            "mean": sum(data) / n if n else None,
        }

    def snapshot(self, *, with_requests: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "in_flight": self.in_flight,
            "peak": self.peak,
            "waiting": self.waiting,
            "slowdown": self.slowdown(),
            "in_flight_by_model": dict(self.in_flight_by_model),
            "peak_by_model": dict(self.peak_by_model),
            "requests_by_path": dict(self.requests_by_path),
            "started": self.started,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "failed": self.failed,
            "finished_by_reason": dict(self.finished_by_reason),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "service_s": self.service_summary(),
            "ttft_s": self.first_tokens.summary(),
            "config": self.config.to_dict(),
        }
        if with_requests:
            data["recent_requests"] = [r.to_dict() for r in self.recent]
        return data


#: where a mock app keeps its state: ``request.app[MOCK_STATE]``
MOCK_STATE = web.AppKey("mock_state", MockState)
