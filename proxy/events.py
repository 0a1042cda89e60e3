"""``GET /throttle/events``: the proxy's admission state pushed as a Server-Sent Events stream.

Why: a dispatcher that polls ``/throttle/status`` sees a freed slot only at its next read; one
subscribed here hears of it within ``poll_s`` (0.1 s), with no request per read.

Theory of operation. One :class:`EventHub` per proxy. While at least one subscriber is
connected, a single producer task reads the state every ``poll_s`` -- the same document
``/throttle/status`` serves, cut down to what changes admission (:func:`slim_state`: per
model queued / in flight / cap, the attributed entries, the queue depth, degraded) -- and,
when it differs from the last one, hands it to every subscriber. No subscriber, no producer:
an idle hub costs nothing.

A subscriber holds one slot, ``latest``, never a queue: the producer overwrites it, and the
subscriber's own handler writes whatever is there when it next can. So a reader that is slow
or stalled skips intermediate states (drop-to-latest) and costs one document of memory plus
its socket's bounded write buffer; it never slows the producer, the other subscribers, or an
admission. Each event is the whole state (``event: state``, ``id: <seq>``), so a skipped one
loses nothing. A reader that takes nothing for ``stall_s`` is disconnected. With nothing to send for ``keepalive_s`` a comment line goes (``: keep-alive``)
so idle connections and proxies in between do not time out. At most ``max_subscribers`` are
served; one more is refused with a 503 (``TooManySubscribers``). On shutdown every stream
ends cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .errors import TooManySubscribers
from .messages import Request, StreamResponse

log = logging.getLogger("llm_throttle")

EVENTS_PATH = "/throttle/events"
_HEAD = (("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
         ("X-Accel-Buffering", "no"))
#: per-model fields that change what a dispatcher may do
_MODEL_FIELDS = ("queued", "in_flight", "cap", "saturated")


def slim_state(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a ``/throttle/status`` document an event carries, in the same shape (so a
    reader of the status parses an event with the same code)."""
    models = {
        name: {k: entry[k] for k in _MODEL_FIELDS if k in entry}
        for name, entry in (doc.get("models") or {}).items() if isinstance(entry, Mapping)
    }
    attributed = {
        name: {k: entry[k] for k in ("in_flight", "queued") if k in entry}
        for name, entry in (doc.get("attributed") or {}).items() if isinstance(entry, Mapping)
    }
    state: dict[str, Any] = {"models": models, "attributed": attributed,
                             "queue": {"depth": (doc.get("queue") or {}).get("depth", 0)},
                             "degraded": bool(doc.get("degraded", False)),
                             "attribution_listed": bool(doc.get("attribution_listed", False))}
    if "hosts" in doc:
        state["hosts"] = doc["hosts"]
    return state


class Subscriber:
    """One connected reader: the latest undelivered event and a flag that one is there."""

    __slots__ = ("closed", "gone", "latest", "ready")

    def __init__(self) -> None:
        self.latest: bytes | None = None
        self.ready = asyncio.Event()
        #: set when the hub closes, to end a stream that waits on a slow reader too
        self.gone = asyncio.Event()
        self.closed = False

    def offer(self, event: bytes) -> None:
        self.latest = event  # an undelivered older one is dropped: each event is whole
        self.ready.set()

    def take(self) -> bytes | None:
        event, self.latest = self.latest, None
        self.ready.clear()
        return event


class EventHub:
    """Publishes state changes to the subscribers; see the module docstring."""

    def __init__(self, read_state: Callable[[], Awaitable[Mapping[str, Any]]], *,
                 max_subscribers: int = 16, poll_s: float = 0.1,
                 keepalive_s: float = 15.0, stall_s: float = 30.0) -> None:
        self.read_state = read_state
        #: a subscriber that takes none of its output for this long is disconnected
        self.stall_s = stall_s
        self.max_subscribers = max_subscribers
        self.poll_s = poll_s
        self.keepalive_s = keepalive_s
        self.subscribers: set[Subscriber] = set()
        #: events published since start (each subscriber sees the latest of them)
        self.published = 0
        self._last: bytes | None = None
        self._producer: asyncio.Task[None] | None = None
        self._closed = False

    # -- the producer ----------------------------------------------------------------------

    def _encode(self, state: Mapping[str, Any]) -> tuple[bytes, bytes]:
        body = json.dumps(state, sort_keys=True, separators=(",", ":")).encode()
        return body, b"event: state\nid: %d\ndata: %s\n\n" % (self.published + 1, body)

    async def _produce(self) -> None:
        while self.subscribers and not self._closed:
            try:
                state = slim_state(await self.read_state())
            except Exception:  # a failing store: say nothing, try again
                log.debug("events: state read failed", exc_info=True)
            else:
                body, event = self._encode(state)
                if body != self._last:
                    self._last = body
                    self.published += 1
                    for sub in self.subscribers:
                        sub.offer(event)
            await asyncio.sleep(self.poll_s)
        self._producer = None

    def _ensure_producer(self) -> None:
        if self._producer is None and not self._closed:
            self._producer = asyncio.get_running_loop().create_task(self._produce())

    # -- subscribers -------------------------------------------------------------------------

    def subscribe(self) -> Subscriber:
        if self._closed:
            raise TooManySubscribers("the proxy is shutting down", retry_after_s=1.0)
        if len(self.subscribers) >= self.max_subscribers:
            raise TooManySubscribers(
                f"{EVENTS_PATH} already serves {self.max_subscribers} subscribers",
                retry_after_s=5.0)
        sub = Subscriber()
        if self._last is not None:
            # the state as last published, at once; the producer sends the next change
            sub.offer(b"event: state\nid: %d\ndata: %s\n\n" % (self.published, self._last))
        self.subscribers.add(sub)
        self._ensure_producer()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if not self.subscribers:
            self._last = None  # the next subscriber starts from a fresh read

    async def stream(self, request: Request) -> StreamResponse:
        """The handler's body: the head, then events as they come, until the client leaves
        or the hub closes."""
        sub = self.subscribe()
        try:
            response = request.start_stream(200, None, _HEAD)
            response.write(b"retry: 1000\n\n")
            while not sub.closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sub.ready.wait(), self.keepalive_s)
                if sub.closed:
                    break
                event = sub.take()
                if not response.write(event if event is not None else b": keep-alive\n\n") \
                        and not await self._drained(response, sub):
                    break
            return response
        finally:
            self.unsubscribe(sub)

    async def _drained(self, response: StreamResponse, sub: Subscriber) -> bool:
        """Wait for a slow reader to take its output (only its own handler waits: newer
        events meanwhile just replace ``latest``); one that takes nothing for
        ``stall_s`` is cut off (aborted), and a closing hub stops the wait. False: end."""
        drain = asyncio.ensure_future(response.drain())
        gone = asyncio.ensure_future(sub.gone.wait())
        try:
            done, _ = await asyncio.wait((drain, gone), timeout=self.stall_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (drain, gone):
                task.cancel()
        if drain in done and not drain.cancelled() and drain.exception() is None:
            return not sub.closed
        response.abort()  # stalled, or closing with output the reader never took
        return False

    async def close(self) -> None:
        """Shutdown: every stream ends (cleanly, with its last chunk), the producer stops."""
        self._closed = True
        for sub in list(self.subscribers):
            sub.closed = True
            sub.ready.set()
            sub.gone.set()
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
