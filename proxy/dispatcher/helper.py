"""Dispatch passes through one long-lived helper in Hermes's own interpreter (see
:mod:`.helper_main`) instead of one ``hermes`` process per pass.

Measured on the bench machine (two cores, hermes-agent 0.19.0): a ``hermes kanban dispatch``
call takes 1.1 s and ~0.7 s of CPU, and a worker needs ~2.8 s of CPU to reach its first
request, so a pass competes with the very workers it starts, and delays each of them by its
own length. Through the helper a pass takes milliseconds.

The helper is only used when it can be exactly the Hermes the CLI runs: the ``hermes``
executable must be a Python script whose ``#!`` line names an interpreter, and the helper,
run by that interpreter, must report the version ``hermes --version`` reports. Otherwise
(a shell wrapper, a pyenv shim, a mismatch, the helper failing to start) the passes go
through the CLI as before, with one log line saying why. A helper that dies or stops answering
fails that one pass (the next tick retries) and is started again; a helper that does not
start leaves that pass to the CLI, and after :data:`MAX_RESTARTS` failed starts in a row the
CLI does every pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("llm_throttle.dispatch")

SCRIPT = Path(__file__).with_name("helper_main.py")
MAX_RESTARTS = 3
_PYTHON_RE = re.compile(r"^python[0-9.]*$")


class HelperUnavailable(Exception):
    """The helper cannot run here (or failed to start); the CLI does the passes."""


class HelperFailed(Exception):
    """One pass through a running helper failed: no reply, a bad reply, or an error."""


def hermes_interpreter(executable: str) -> str | None:
    """The Python interpreter that runs the ``hermes`` console script, from its ``#!`` line;
    None when ``executable`` is not such a script (a shell wrapper, a shim, a binary)."""
    path = shutil.which(executable)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].decode(errors="replace").split()
    if not parts:
        return None
    program = parts[0]
    if os.path.basename(program) == "env" and len(parts) == 2:
        found = shutil.which(parts[1])
        program = found or ""
    if not _PYTHON_RE.match(os.path.basename(program)) or not os.access(program, os.X_OK):
        return None
    return program


class DispatchHelper:
    """A running :mod:`.helper_main`; one pass at a time."""

    def __init__(self, interpreter: str, *, env: Mapping[str, str] | None = None,
                 timeout_s: float = 30.0, expect_version: str | None = None) -> None:
        self.interpreter = interpreter
        self.env = dict(env) if env is not None else None
        self.timeout_s = timeout_s
        #: the version ``hermes --version`` printed; the helper must import the same
        self.expect_version = expect_version
        self.version: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._ids = 0
        self._failed_starts = 0
        #: set when the CLI must do the passes from now on (the reason)
        self.given_up: str | None = None

    @property
    def argv(self) -> list[str]:
        return [self.interpreter, str(SCRIPT)]

    async def dispatch(self, board: str, max_spawn: int) -> tuple[Any, str]:
        """One pass; returns (the ``--json`` document, what the pass wrote to stderr).

        Raises :class:`HelperUnavailable` when the helper cannot run (the CLI does this pass;
        :attr:`given_up` says whether for good), or :class:`HelperFailed` when this pass
        failed in a running helper (it is started again next time).
        """
        async with self._lock:
            if self.given_up is not None:
                raise HelperUnavailable(self.given_up)
            proc = await self._ensure_started()
            self._ids += 1
            request = {"id": self._ids, "board": board, "max": max_spawn}
            try:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write((json.dumps(request) + "\n").encode())
                await proc.stdin.drain()
                line = await asyncio.wait_for(proc.stdout.readline(), self.timeout_s)
            except (OSError, TimeoutError) as exc:
                await self._stop()
                raise HelperFailed(f"no reply ({type(exc).__name__})") from None
            try:
                reply = json.loads(line)
            except ValueError:
                await self._stop()
                raise HelperFailed(f"bad reply {line[:120]!r}") from None
            if not isinstance(reply, dict) or reply.get("id") != request["id"]:
                await self._stop()
                raise HelperFailed(f"reply out of step: {str(reply)[:120]}")
            if reply.get("error"):
                raise HelperFailed(str(reply["error"]))
            stderr = str(reply.get("stderr") or "") + str(reply.get("stdout") or "")
            return reply.get("doc"), stderr

    async def _ensure_started(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=self.env,
                # its own process group: stopping it never signals the companion; workers
                # run in sessions of their own and outlive it
                start_new_session=True)
        except OSError as exc:
            self._give_up(f"cannot start {self.interpreter}: {exc}")
            raise HelperUnavailable(self.given_up or "") from exc
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        self._stderr_task = asyncio.create_task(_log_lines(proc.stderr))
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), self.timeout_s)
            hello = json.loads(line)
        except (TimeoutError, ValueError, OSError):
            hello = {"ready": False, "error": "no greeting"}
        if not isinstance(hello, dict) or not hello.get("ready"):
            await self._stop()
            why = hello.get("error") if isinstance(hello, dict) else hello
            self._failed_starts += 1
            if self._failed_starts >= MAX_RESTARTS:
                self._give_up(f"the helper failed to start {self._failed_starts} times ({why})")
            else:
                log.warning("the dispatch helper did not start (%s); this pass goes through "
                            "the CLI", why)
            raise HelperUnavailable(f"the helper did not start: {why}")
        version = str(hello.get("version") or "")
        if self.expect_version is not None and version != self.expect_version:
            await self._stop()
            self._give_up(f"{self.interpreter} imports hermes {version or '?'}, but the "
                          f"executable is {self.expect_version}")
            raise HelperUnavailable(self.given_up or "")
        self._failed_starts = 0
        self.version = version
        log.info("dispatch passes through a helper in %s (hermes %s)", self.interpreter,
                 version)
        return proc

    def _give_up(self, why: str) -> None:
        self.given_up = why
        log.warning("dispatch passes go through the hermes CLI: %s", why)

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task
            self._stderr_task = None

    async def close(self) -> None:
        async with self._lock:
            await self._stop()


async def _log_lines(stream: asyncio.StreamReader) -> None:
    """The helper's own stderr (import-time warnings of Hermes), one log line each."""
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        if text:
            log.info("dispatch helper: %s", text)


def helper_for(executable: str, env: Mapping[str, str] | None, timeout_s: float,
               version: str | None) -> DispatchHelper | None:
    """A helper for this ``hermes``, or None (with the reason logged) when it cannot be."""
    interpreter = hermes_interpreter(executable)
    if interpreter is None:
        log.info("dispatch passes go through the hermes CLI: %s is not a Python script "
                 "with a #! line", executable)
        return None
    return DispatchHelper(interpreter, env=env, timeout_s=timeout_s, expect_version=version)

