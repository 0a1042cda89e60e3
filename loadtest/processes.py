"""Servers a scenario or the demo runs as subprocesses on loopback ports, and their CPU time.

Each server is a real process (the mock LLM, ``llm-throttle serve``, nginx, redis-server), so
its CPU time is read from ``/proc/<pid>/stat`` (utime + stime, children included for nginx's
workers) and nothing it does is charged to the load generator. A :class:`ServiceGroup` stops
every process it started, in reverse order, whatever happened in between.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp
import yaml

#: the repository (or site-packages) folder holding ``proxy`` and ``loadtest``
CODE_ROOT = Path(__file__).resolve().parents[1]
NGINX_TEMPLATE = Path(__file__).resolve().parent / "templates" / "nginx.conf"


class ServiceError(RuntimeError):
    """A server did not start, or died; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (the kernel's pick); the caller binds it soon after."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process (0 when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name may hold spaces or parentheses: fields start after the last ')'.
    fields = raw[raw.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all processes have spent busy since boot, all cores (from /proc/stat)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    values = [int(v) for v in first[1:9]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


async def wait_for_quiet(limit_cores: float = 0.3, max_wait_s: float = 60.0,
                         window_s: float = 1.0) -> float:
    """Wait until the machine's other work uses under ``limit_cores`` (other sessions' tests
    share this machine); returns the last busy level measured, in cores."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = machine_busy_seconds()
        await asyncio.sleep(window_s)
        cores = (machine_busy_seconds() - before) / window_s
        if cores < limit_cores or time.monotonic() >= deadline:
            return cores


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (nginx's workers under its master)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        out.extend(int(c) for c in text.split())
    return out


def find_nginx() -> str | None:
    """nginx from PATH or Debian's /usr/sbin (not on a non-root PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def find_redis_server() -> str | None:
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin")


def redis_store_available() -> bool:
    """Whether this checkout has the Redis store (``proxy/limits/redis.py``)."""
    try:
        return importlib.util.find_spec("proxy.limits.redis") is not None
    except ModuleNotFoundError:
        return False


@dataclass
class Service:
    """One started server process."""

    name: str
    process: subprocess.Popen[bytes]
    #: origin, e.g. ``http://127.0.0.1:41234`` (redis: ``redis://127.0.0.1:41235``)
    url: str
    log_path: Path
    #: include child processes in :meth:`cpu_seconds` (nginx master + workers)
    with_children: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self) -> list[int]:
        return [self.pid, *child_pids(self.pid)] if self.with_children else [self.pid]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float) -> None:
        """Wait for exit after :meth:`terminate`; kill it when it overstays."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@dataclass
class ServiceGroup:
    """Starts servers into ``workdir`` and stops all of them on exit (even on failure)."""

    workdir: Path
    ready_timeout_s: float = 20.0
    services: list[Service] = field(default_factory=list)

    async def __aenter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop_all()

    def stop_all(self, timeout: float = 15.0) -> None:
        """SIGTERM everything at once (reverse start order), then wait for each."""
        services, self.services = self.services[::-1], []
        for service in services:
            service.terminate()
        for service in services:
            service.wait_stopped(timeout)

    # -- starting ------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], url: str,
               env: Mapping[str, str] | None = None, with_children: bool = False) -> Service:
        log_path = self.workdir / f"{name}.log"
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(CODE_ROOT), full_env.get("PYTHONPATH", "")) if p)
        full_env.update(env or {})
        with open(log_path, "wb") as log:
            # A session of its own: the terminal's Ctrl-C reaches only us; we stop them.
            process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, env=full_env, start_new_session=True)
        service = Service(name, process, url, log_path, with_children)
        self.services.append(service)
        return service

    async def _wait_http(self, service: Service, path: str) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if not service.alive():
                    raise ServiceError(f"{service.name} exited with code "
                                       f"{service.process.returncode}:\n{service.log_tail()}")
                try:
                    async with session.get(service.url + path) as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise ServiceError(f"{service.name} not ready on {service.url}{path} within "
                                       f"{self.ready_timeout_s:g}s:\n{service.log_tail()}")
                await asyncio.sleep(0.05)

    async def start_mock(self, config: Mapping[str, Any], name: str = "mock") -> Service:
        """The mock LLM with every :class:`MockLLMConfig` field from ``config``."""
        port = free_port()
        service = self._spawn(name, [sys.executable, "-m", "loadtest", "mock-llm",
                                     "--port", str(port)], f"http://127.0.0.1:{port}")
        await self._wait_http(service, "/health")
        if config:
            async with aiohttp.ClientSession() as session, \
                    session.post(service.url + "/mock/config", json=dict(config)) as r:
                if r.status != 200:
                    raise ServiceError(f"mock rejected its config: {await r.text()}")
        return service

    async def start_proxy(self, name: str, config: Mapping[str, Any],
                          env: Mapping[str, str]) -> Service:
        """``llm-throttle serve`` on a free port; ``${VAR}`` in the config come from ``env``."""
        port = free_port()
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        service = self._spawn(
            name,
            [sys.executable, "-m", "proxy", "--log-level", "WARNING", "serve",
             "--config", str(path), "--listen", f"127.0.0.1:{port}"],
            f"http://127.0.0.1:{port}", env=env)
        await self._wait_http(service, "/healthz")
        return service

    async def start_llama_server(self, binary: str, model: str, slots: int,
                                 threads: int = 1, name: str = "llama-server") -> Service:
        """llama.cpp's server on CPU (``scripts/build-llama-server.sh``), its log in a file:
        it logs about 1 KB per request, and a pipe nobody reads blocks it within a minute."""
        port = free_port()
        service = self._spawn(
            name, [binary, "-m", model, "-np", str(slots), "-c", "2048", "--host", "127.0.0.1",
                   "--port", str(port), "--no-repack", "--metrics", "-t", str(threads)],
            f"http://127.0.0.1:{port}")
        ready, self.ready_timeout_s = self.ready_timeout_s, max(self.ready_timeout_s, 120.0)
        try:
            await self._wait_http(service, "/health")
        finally:
            self.ready_timeout_s = ready
        return service

    async def start_quick_proxy(self, upstream: str, max_in_flight: int,
                                name: str = "proxy") -> Service:
        """The file-less mode: ``llm-throttle serve --upstream URL --max-in-flight N``."""
        port = free_port()
        service = self._spawn(
            name,
            [sys.executable, "-m", "proxy", "--log-level", "WARNING", "serve", "--upstream",
             upstream, "--max-in-flight", str(max_in_flight), "--listen", f"127.0.0.1:{port}"],
            f"http://127.0.0.1:{port}")
        await self._wait_http(service, "/healthz")
        return service

    async def start_passthrough(self, upstream: str, name: str = "passthrough") -> Service:
        """A minimal aiohttp reverse proxy (:mod:`loadtest.passthrough`): a CPU reference."""
        port = free_port()
        service = self._spawn(
            name, [sys.executable, "-m", "loadtest", "passthrough", "--upstream", upstream,
                   "--port", str(port)], f"http://127.0.0.1:{port}")
        await self._wait_http(service, "/health")
        return service

    async def start_nginx(self, upstream: str, name: str = "nginx") -> Service:
        """nginx as a plain reverse proxy (buffering off, keep-alive upstream), one worker."""
        binary = find_nginx()
        if binary is None:
            raise ServiceError("nginx is not installed")
        port = free_port()
        prefix = self.workdir / name
        prefix.mkdir(parents=True, exist_ok=True)
        # Workers drop root to nobody: let them into their temp folders.
        os.chmod(self.workdir, 0o755)
        prefix.chmod(0o777)
        host_port = upstream.removeprefix("http://").rstrip("/")
        conf = NGINX_TEMPLATE.read_text()
        for key, value in (("@PREFIX@", str(prefix)), ("@LISTEN@", f"127.0.0.1:{port}"),
                           ("@UPSTREAM@", host_port)):
            conf = conf.replace(key, value)
        conf_path = prefix / "nginx.conf"
        conf_path.write_text(conf)
        service = self._spawn(
            name, [binary, "-p", str(prefix), "-c", str(conf_path), "-e", "stderr"],
            f"http://127.0.0.1:{port}", with_children=True)
        await self._wait_http(service, "/health")
        return service

    async def start_redis(self, name: str = "redis") -> Service:
        binary = find_redis_server()
        if binary is None:
            raise ServiceError("redis-server is not installed")
        port = free_port()
        service = self._spawn(
            name, [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(self.workdir)],
            f"redis://127.0.0.1:{port}/0")
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"PING\r\n")
                await writer.drain()
                reply = await asyncio.wait_for(reader.readline(), 1.0)
                writer.close()
                if reply.startswith(b"+PONG"):
                    return service
            except (OSError, TimeoutError):
                pass
            if not service.alive() or time.monotonic() > deadline:
                raise ServiceError(f"redis-server did not start:\n{service.log_tail()}")
            await asyncio.sleep(0.05)
