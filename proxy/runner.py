"""Running a proxy: its listening sockets, the signals that stop or reload it.

``start_proxy`` puts a ``Proxy`` (``proxy/app.py``) behind an ``HttpServer``
(``proxy/server.py``) on the configured listeners; tests and the chaos soak use it directly.
``serve_forever`` is the CLI's: it runs until SIGTERM/SIGINT and then shuts down gracefully,
and SIGHUP reloads the configuration file (``proxy/reload.py``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

from .app import Proxy
from .config import Config
from .limits.base import LimitStore
from .reload import reload_file
from .server import HttpServer, ServerLimits

log = logging.getLogger("llm_throttle")


@dataclass
class RunningProxy:
    """A proxy listening on its sockets (tests, the CLI)."""

    proxy: Proxy
    server: HttpServer
    url: str

    async def close(self) -> None:
        """Graceful: stop accepting, drain (see ``Proxy.stop``), then close connections."""
        self.server.stop_listening()
        await self.proxy.stop()
        await self.server.close()


async def start_proxy(config: Config, host: str | None = None, port: int | None = None,
                      store: LimitStore | None = None) -> RunningProxy:
    """Start listening; ``port=0`` picks a free port (see ``RunningProxy.url``)."""
    proxy = Proxy(config, store)
    await proxy.start()
    server = HttpServer(proxy.dispatch, ServerLimits(
        max_body_bytes=config.max_body_bytes, body_read_timeout_s=config.body_read_timeout_s,
        header_read_timeout_s=config.header_read_timeout_s,
        max_connections=config.max_connections))
    try:
        bound_host, bound_port = await server.listen(
            host or config.listen_host, config.listen_port if port is None else port)
        if config.admin_listen:
            await server.listen(*config.admin_listen, admin=True)
    except BaseException:
        await server.close()
        await proxy.stop()
        raise
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return RunningProxy(proxy, server, f"http://{shown}:{bound_port}")


async def serve_forever(config: Config, host: str | None = None, port: int | None = None,
                        on_ready: Callable[[str], None] | None = None,
                        config_path: str | None = None) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully (see ``Proxy.stop``); SIGHUP
    reloads ``config_path`` (see ``proxy/reload.py``)."""
    running = await start_proxy(config, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()
    if config_path is not None:
        def reload() -> None:
            task = loop.create_task(reload_file(running.proxy, config_path))
            reloads.add(task)
            task.add_done_callback(reloads.discard)
        loop.add_signal_handler(signal.SIGHUP, reload)
    if on_ready is not None:
        on_ready(running.url)
    try:
        await stop.wait()
        log.info("shutting down: draining up to %gs", config.shutdown_grace_s)
    finally:
        await running.close()
