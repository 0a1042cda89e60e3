"""Fixtures of the dispatcher tests: a private redis-server, and the real ``hermes`` CLI.

The real CLI is found, in order, at ``$LLM_THROTTLE_HERMES``, on ``PATH``, or (with
``LLM_THROTTLE_INSTALL_HERMES=1``) installed from PyPI into a virtualenv of its own under
``$LLM_THROTTLE_HERMES_VENV`` (default ``~/.cache/llm-throttle/hermes-<version>``): Hermes pins
its own ``openai`` version, which should not replace the one the proxy's tests use. Tests
that need it are marked ``hermes`` and skip when it cannot be found.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERMES_VERSION = "0.19.0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def dispatch_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server for the lock tests (no persistence)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _hermes_version(exe: str) -> str | None:
    try:
        proc = subprocess.Popen([exe, "--version"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        return None
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode(errors="replace")
    finally:
        proc.kill()
        proc.wait()
    parts = line.split()
    return next((p.lstrip("v") for p in parts if p.lstrip("v")[:1].isdigit()), None)


def _install_hermes() -> str:
    venv = Path(os.environ.get("LLM_THROTTLE_HERMES_VENV",
                               Path.home() / ".cache" / "llm-throttle" /
                               f"hermes-{HERMES_VERSION}"))
    exe = venv / "bin" / "hermes"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                        f"hermes-agent=={HERMES_VERSION}"], check=True, timeout=900)
    return str(exe)


@pytest.fixture(scope="session")
def hermes_exe() -> str:
    """Absolute path of a ``hermes`` executable of version 0.19.x, or skip."""
    candidates = [os.environ.get("LLM_THROTTLE_HERMES"), shutil.which("hermes")]
    for exe in filter(None, candidates):
        version = _hermes_version(exe)
        if version and version.startswith(HERMES_VERSION.rsplit(".", 1)[0] + "."):
            return os.path.abspath(exe)
    if os.environ.get("LLM_THROTTLE_INSTALL_HERMES") == "1":
        return _install_hermes()
    pytest.skip(f"hermes-agent {HERMES_VERSION} not found (set LLM_THROTTLE_HERMES, or "
                "LLM_THROTTLE_INSTALL_HERMES=1 to install it from PyPI)")


@dataclass
class HermesHome:
    """A throwaway ``HOME`` with its own ``~/.hermes``, and a way to run ``hermes`` in it."""

    exe: str
    home: Path
    env: dict[str, str]

    @property
    def root(self) -> Path:
        return self.home / ".hermes"

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.exe, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.home, stdin=subprocess.DEVNULL,
                              check=False)  # hermes exits 0 on errors anyway: callers look


    def json(self, *args: str) -> Any:
        done = self.run(*args)
        assert not done.stderr.strip(), done.stderr
        return json.loads(done.stdout)

    def create_board(self, slug: str) -> None:
        done = self.run("kanban", "boards", "create", slug)
        assert "created" in done.stdout, done.stdout + done.stderr

    def create_task(self, board: str, title: str, *, assignee: str | None = "worker",
                    parents: tuple[str, ...] = ()) -> str:
        args = ["kanban", "--board", board, "create", title, "--json"]
        if assignee:
            args += ["--assignee", assignee]
        for parent in parents:
            args += ["--parent", parent]
        return str(self.json(*args)["id"])

    def db_path(self, board: str) -> Path:
        if board == "default":
            return self.root / "kanban.db"
        return self.root / "kanban" / "boards" / board / "kanban.db"

    def statuses(self, board: str) -> dict[str, str]:
        """task id -> status, read-only."""
        uri = self.db_path(board).resolve().as_uri() + "?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=5) as conn:
            return dict(conn.execute("SELECT id, status FROM tasks").fetchall())

    def worker_pids(self, board: str) -> list[int]:
        uri = self.db_path(board).resolve().as_uri() + "?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT worker_pid FROM task_runs WHERE worker_pid IS NOT NULL")
            return [int(r[0]) for r in rows]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment without any Hermes setting that would point outside ``home``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HERMES_", "OPENAI_", "ANTHROPIC_", "OPENROUTER_"))}
    env.update(HOME=str(home), **extra)
    return env


@pytest.fixture
def hermes_home(hermes_exe: str, tmp_path: Path) -> Iterator[HermesHome]:
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home, HERMES_BIN=hermes_exe)
    hh = HermesHome(hermes_exe, home, env)
    yield hh
    kill_workers(hh)


def kill_workers(hh: HermesHome) -> None:
    """Stop any worker the test's dispatches started, by the pid Hermes recorded."""
    boards = [p.parent.name for p in (hh.root / "kanban" / "boards").glob("*/kanban.db")]
    if (hh.root / "kanban.db").exists():
        boards.append("default")
    for board in boards:
        try:
            pids = hh.worker_pids(board)
        except sqlite3.Error:
            continue
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, 9)  # workers run in their own session: pid == pgid
