"""How a client connection ends (``proxy/connection.py`` serves it until then).

Four ways, each keeping the client able to read what it was sent where that is still
possible: a lingering close after an error answer (half-close, drop what arrives, close at
the client's EOF or after ``_LINGER_S``), the idle guards of the server's sweep (slowloris),
draining at shutdown (idle now, busy after the answers owed) and an abort (unsent output
dropped, optionally with an RST).
"""

from __future__ import annotations

import asyncio
import socket
import struct

from .connection_state import ConnState, check_move
from .flow_control import FlowControl, ReadPause
from .messages import Request

#: after an error answer, input is read and dropped this long before the close, so the
#: client reads the answer instead of a reset (lingering close, as nginx does)
_LINGER_S = 1.0
#: SO_LINGER on, timeout 0: close() sends an RST
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class ConnectionClosing(asyncio.Protocol):
    """The ends of a connection's life; ``connection.ClientConnection`` sets these fields."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    flow: FlowControl
    state: ConnState
    #: since when the connection has waited on the client (None: it does not)
    idle_since: float | None
    _current: Request | None  # the request being answered

    def _move(self, state: ConnState) -> None:
        check_move(self.state, state)
        self.state = state

    def _linger(self) -> None:
        """Close once the client had time to read the last answer: half-close now (the
        answer is flushed, then FIN), drop what still arrives, close at the client's EOF or
        after ``_LINGER_S``. Closing with unread input would send a reset, and the client
        would lose the answer."""
        if self.state is ConnState.CLOSED:
            return
        if self.state is not ConnState.ERROR:
            self._move(ConnState.ERROR)
        if not self.transport.can_write_eof():
            self._close()
            return
        self.transport.write_eof()
        self.loop.call_later(_LINGER_S, self._close)

    def _close(self) -> None:
        if self.state is not ConnState.CLOSED:
            self._move(ConnState.CLOSED)
            self.transport.close()

    def close_if_idle(self, now: float, timeout: float) -> None:
        """Slowloris guards: no whole request head within ``timeout`` of going idle, or
        answers written and not taken by the client for ``timeout`` (it pipelines and never
        reads): closed (aborted in the second case: its unsent output cannot be flushed)."""
        since = self.idle_since
        if since is None or now - since <= timeout:
            return
        if self.state is ConnState.IDLE:
            self.idle_since = None
            self._close()
        elif self._current is None and self.flow.paused_for(ReadPause.OUTPUT):
            self.idle_since = None
            self.abort()

    def start_draining(self) -> None:
        """The server stops: an idle keep-alive connection closes now, a busy one after the
        answers it owes (``Connection: close``)."""
        if self.state is ConnState.IDLE:
            self._close()
        elif self.state is ConnState.ACTIVE:
            self._move(ConnState.MUST_CLOSE)

    def abort(self, reset: bool = False) -> None:
        """Drop the connection now, unsent output and all: a stream that cannot be ended
        properly, or a client that does not read its answers. ``reset``: with an RST, not a
        FIN (for a body that ends at the close, a FIN would read as its end)."""
        if self.state is not ConnState.CLOSED or not self.flow.lost:
            self.state = ConnState.CLOSED
            sock = self.transport.get_extra_info("socket")
            if reset and sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            self.transport.abort()
