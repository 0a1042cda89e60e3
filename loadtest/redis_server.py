"""A real ``redis-server`` for tests: started on a free port in a temp dir, killable.

Tests that need Redis to fail (crash, restart without data, unreachable, frozen) drive it
through ``kill()``, ``shutdown_nosave()``, ``restart()``, ``pause()`` / ``resume()``
(SIGSTOP / SIGCONT) and ``command()`` (``CONFIG SET maxmemory``, ``CLIENT KILL``, ...); the
port stays the same across restarts so clients reconnect to the same URL. ``args`` adds
server options (``--requirepass``, ``--unixsocket``, TLS, ``--replicaof``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .processes import find_redis_server, free_port


def redis_server_binary() -> str | None:
    return find_redis_server()


@contextlib.contextmanager
def redis_url_or_own(url: str | None) -> Iterator[str]:
    """``url`` when one is given (``--redis URL``); otherwise the URL of a ``RedisServer`` of
    our own, stopped when the block ends."""
    if url is not None:
        yield url
        return
    if redis_server_binary() is None:
        raise SystemExit("redis-server not found: install it or pass --redis URL")
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


class RedisServer:
    """One ``redis-server`` process without persistence (a restart loses every key)."""

    def __init__(self, port: int | None = None, binary: str | None = None,
                 args: Sequence[str] = (), password: str | None = None):
        self.binary = binary or redis_server_binary() or "redis-server"
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="llm-throttle-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.args = list(args)
        #: the default user's password (``command()`` authenticates with it)
        self.password = password
        self.paused = False
        #: the command line when run as a sentinel (``start_sentinel``)
        self.binary_args: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            return
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir),
             "--protected-mode", "no", "--loglevel", "warning",
             *(["--requirepass", self.password] if self.password else []), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if self.ping():
                self.paused = False
                return
            time.sleep(0.01)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def start_sentinel(self, timeout: float = 10.0) -> None:
        """Run as a sentinel: ``binary_args`` hold the config file and ``--sentinel``."""
        self.process = subprocess.Popen(
            [self.binary, *self.binary_args], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("redis sentinel did not start")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """Run one command over a raw socket (no client library state), return the reply."""
        payload = _command(*args)
        if self.password:
            payload = _command("AUTH", self.password) + payload
        with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as s:
            s.sendall(payload)
            reply = _read_reply(s)
            if self.password:
                reply = reply.partition(b"+OK\r\n")[2] or _read_reply(s)
            return reply

    def flushall(self) -> None:
        self.command("FLUSHALL")

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing is answered."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.process is not None and self.paused:
            os.kill(self.process.pid, signal.SIGCONT)
            self.paused = False

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-whatever, data lost."""
        self.resume()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def shutdown_nosave(self) -> None:
        """``SHUTDOWN NOSAVE``: a clean stop that keeps nothing."""
        self.resume()
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.command("SHUTDOWN", "NOSAVE")
        except OSError:
            pass
        self.process.wait(5)

    def restart(self) -> None:
        """Stop (if running) and start again on the same port, empty."""
        self.shutdown_nosave()
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _command(*args: str) -> bytes:
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    return payload


def _read_reply(s: socket.socket) -> bytes:
    """Whatever arrives within a moment of the first bytes (enough for one short reply)."""
    data = s.recv(1 << 20)
    s.settimeout(0.05)
    try:
        while chunk := s.recv(1 << 20):
            data += chunk
    except OSError:
        pass
    finally:
        s.settimeout(5.0)
    return data
