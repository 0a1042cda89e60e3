"""Whether a connection goes back to the pool: upstreams that close right after answering.

Why: llama-server (the cpp-httplib 0.58 of llama-cpp-python 0.3.36's tree) announces
``Keep-Alive: timeout=5, max=100`` on a streamed answer, then closes the connection right
after its terminating chunk: its chunked content provider reports the end of the stream as
"no more data" (``false``), which cpp-httplib takes for a failed write, and it closes. A
connection pooled after such an answer is open only until that FIN arrives (microseconds,
milliseconds on a loaded host); a request written in that gap finds it closed unanswered, and
a POST there is never sent again (the upstream may have read it), so the client got a 502.
Under closed-loop streams that was a few requests in a hundred.

Theory of operation: the pool notes, per body framing (``Framing``), when the upstream closed
a connection within ``QUICK_CLOSE_S`` of the end of an exchange on it (while idle, or under
the next request before any answer byte). A framing so marked is not pooled: the connection
closes when its exchange ends, which is what the upstream does anyway. Every ``PROBE_EVERY``-th
such connection is kept instead, out of use, for ``QUICK_CLOSE_S`` (a probe): open after that,
the upstream keeps connections after all (it was restarted, or the close was a one-off), so
the mark goes and the probe joins the pool. No request is ever written on a probe, so probing
cannot race the upstream's close either.
"""

from __future__ import annotations

import enum

from .upstream_framing import Framing

#: a close this soon after an exchange ended is the upstream's choice, not a keep-alive timeout
#: (the shortest common ones are 2 s: gunicorn; 5 s: uvicorn, Node, llama-server)
QUICK_CLOSE_S = 1.0
#: one connection in this many of a marked framing is probed for keep-alive again
PROBE_EVERY = 32


class Reuse(enum.Enum):
    """What to do with a connection whose exchange ended cleanly with keep-alive."""

    POOL = "pool"
    CLOSE = "close"  # the upstream closes after this framing: do not race it
    PROBE = "probe"  # hold it out of use for QUICK_CLOSE_S: still open, the mark goes


class ReusePolicy:
    """Per pool: the framings after which the upstream was seen closing at once."""

    __slots__ = ("_marked",)

    def __init__(self) -> None:
        #: marked framing -> connections closed since the last probe
        self._marked: dict[Framing, int] = {}

    def after_exchange(self, framing: Framing) -> Reuse:
        count = self._marked.get(framing)
        if count is None:
            return Reuse.POOL
        if count + 1 >= PROBE_EVERY:
            self._marked[framing] = 0
            return Reuse.PROBE
        self._marked[framing] = count + 1
        return Reuse.CLOSE

    def closed_by_upstream(self, framing: Framing, idle_s: float) -> bool:
        """The upstream closed a connection ``idle_s`` after an exchange of ``framing`` ended
        on it (and before another answered); True when this marks the framing now."""
        if idle_s >= QUICK_CLOSE_S or framing in self._marked:
            return False
        self._marked[framing] = 0
        return True

    def probe_survived(self, framing: Framing) -> None:
        self._marked.pop(framing, None)

    @property
    def marked(self) -> frozenset[Framing]:
        """Framings not pooled now (status, tests)."""
        return frozenset(self._marked)
