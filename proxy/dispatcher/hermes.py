"""A small async client for the real ``hermes`` CLI.

What the CLI does, measured on hermes-agent 0.19.0 (see docs/hermes.md):

* every command exits 0, errors included: an unknown board prints to stderr and nothing to
  stdout. So a call succeeds only when stdout is one JSON document of the expected shape and
  stderr is empty (minus lines the operator chose to ignore); the exit status is checked too;
* ``kanban list`` recomputes ready tasks (a write), so running/ready counts come from
  ``kanban boards list --json`` (per-status counts of every board, no recompute) or from
  :class:`.sqlite_probe.SQLiteProbe`, which opens each board database with ``mode=ro``;
* ``kanban dispatch --max N`` caps the board's *running* tasks at N (a live cap, PR #23295,
  every PyPI release since 0.13.0); earlier builds capped only the spawns of one pass. The
  translation lives in :func:`.hermes_model.max_argument`; when the version is unknown we
  assume the old meaning, which can only under-spawn;
* ``dispatch --max 0`` spawns nothing under either meaning: a maintenance pass that reclaims
  crashed or stale workers and promotes tasks whose parents finished;
* workers are started detached (their own session), so killing a timed-out ``hermes`` call
  never kills the workers it already spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .helper import DispatchHelper, HelperFailed, HelperUnavailable
from .hermes_model import (
    WORKER_FAILURES,
    BoardCounts,
    DispatchOutcome,
    HermesError,
    HermesTimeout,
    HermesVersion,
)


def _how_many(value: Any) -> int:
    """A count Hermes reports as a list of task ids or as a number; 0 when malformed."""
    if isinstance(value, list | tuple):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    return 0


@dataclass(frozen=True, slots=True)
class _Completed:
    stdout: str
    stderr: str
    returncode: int | None


class HermesCLI:
    """Runs ``hermes`` subcommands; every call has a timeout and strict success rules."""

    def __init__(
        self,
        executable: str = "hermes",
        *,
        timeout_s: float = 30.0,
        env: Mapping[str, str] | None = None,
        ignore_stderr: Sequence[re.Pattern[str]] = (),
        helper: DispatchHelper | None = None,
    ) -> None:
        self.executable = executable
        self.timeout_s = timeout_s
        self.env = dict(env) if env is not None else None
        self.ignore_stderr = tuple(ignore_stderr)
        #: runs the dispatch passes in Hermes's interpreter (see :mod:`.helper`); None: the CLI
        self.helper = helper

    # -- commands -------------------------------------------------------------------------------

    async def version(self) -> HermesVersion:
        """From the first line of ``hermes --version``; the rest (a PyPI check) is not awaited."""
        argv = [self.executable, "--version"]
        proc = await self._spawn(argv)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), self.timeout_s)
        except TimeoutError:
            raise HermesTimeout(argv, f"printed no version within {self.timeout_s:g}s") from None
        finally:
            await self._reap(proc)
        text = line.decode(errors="replace")
        try:
            version = HermesVersion.parse(text)
        except ValueError:
            raise HermesError(argv, f"printed no version: {text.strip()[:80]!r}") from None
        if self.helper is not None and self.helper.expect_version is None:
            self.helper.expect_version = str(version)
        return version

    async def board_counts(self) -> dict[str, BoardCounts]:
        argv = ["kanban", "boards", "list", "--json"]
        doc = await self.run_json(argv)
        if not isinstance(doc, list):
            raise HermesError(self._argv(argv), "returned JSON that is not a list of boards")
        boards: dict[str, BoardCounts] = {}
        for entry in doc:
            if not isinstance(entry, dict) or not isinstance(entry.get("slug"), str):
                raise HermesError(self._argv(argv), f"returned a board without slug: {entry!r}")
            counts = entry.get("counts") or {}
            if not isinstance(counts, dict):
                raise HermesError(self._argv(argv), f"returned bad counts: {counts!r}")
            if entry.get("archived"):
                continue
            try:
                by_status = {str(k): int(v) for k, v in counts.items()}
            except (TypeError, ValueError):
                raise HermesError(self._argv(argv), f"returned bad counts: {counts!r}") from None
            boards[entry["slug"]] = BoardCounts(
                slug=entry["slug"], by_status=by_status, db_path=entry.get("db_path"))
        return boards

    async def dispatch(self, board: str, max_spawn: int) -> DispatchOutcome:
        argv = ["kanban", "--board", board, "dispatch", "--max", str(max_spawn), "--json"]
        doc = await self._helper_pass(argv, board, max_spawn) if self.helper else None
        if doc is None:
            doc = await self.run_json(argv)
        if not isinstance(doc, dict) or not isinstance(doc.get("spawned"), list):
            raise HermesError(self._argv(argv), "returned JSON without a 'spawned' list")
        spawned = tuple(
            str(s.get("task_id")) if isinstance(s, dict) else str(s) for s in doc["spawned"]
        )
        try:
            reclaimed, promoted = int(doc.get("reclaimed") or 0), int(doc.get("promoted") or 0)
            crashed = tuple(str(c) for c in doc.get("crashed") or ())
        except (TypeError, ValueError):
            # The spawns happened; a malformed side field must not hide them.
            reclaimed, promoted, crashed = 0, 0, ()
        failures = {kind: _how_many(doc.get(kind)) for kind in WORKER_FAILURES}
        return DispatchOutcome(board=board, max_arg=max_spawn, spawned=spawned,
                               reclaimed=reclaimed, crashed=crashed, promoted=promoted, raw=doc,
                               failures=failures)

    async def _helper_pass(self, argv: list[str], board: str, max_spawn: int) -> Any:
        """The pass through the helper, held to the CLI's success rules; None: the helper
        cannot run here, use the CLI."""
        assert self.helper is not None
        try:
            doc, stderr = await self.helper.dispatch(board, max_spawn)
        except HelperUnavailable:
            if self.helper.given_up is not None:
                self.helper = None
            return None
        except HelperFailed as exc:
            raise HermesError(self._argv(argv), f"failed in the dispatch helper: {exc}") \
                from None
        unexpected = self._unexpected_stderr(stderr)
        if unexpected:
            raise HermesError(self._argv(argv), "wrote to stderr", unexpected)
        return doc

    async def close(self) -> None:
        """Stops the dispatch helper, if one runs (the workers it started keep running)."""
        if self.helper is not None:
            await self.helper.close()

    def command_line(self, args: Sequence[str]) -> str:
        return " ".join(self._argv(args))

    # -- plumbing -------------------------------------------------------------------------------

    async def run_json(self, args: Sequence[str]) -> Any:
        """Run ``hermes <args>``; the parsed stdout, or :class:`HermesError`."""
        argv = self._argv(args)
        done = await self._run(argv)
        stderr = self._unexpected_stderr(done.stderr)
        if stderr:
            raise HermesError(argv, "wrote to stderr", stderr)
        if done.returncode != 0:
            raise HermesError(argv, f"exited with status {done.returncode}", done.stderr)
        try:
            return json.loads(done.stdout)
        except ValueError:
            excerpt = done.stdout.strip()[:120]
            raise HermesError(argv, f"printed non-JSON output: {excerpt!r}") from None

    def _argv(self, args: Sequence[str]) -> list[str]:
        return [self.executable, *args]

    def _unexpected_stderr(self, text: str) -> str:
        lines = [
            line for line in text.splitlines()
            if line.strip() and not any(p.search(line) for p in self.ignore_stderr)
        ]
        return "\n".join(lines)

    async def _spawn(self, argv: Sequence[str]) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                # Own process group, so a timeout kills the call and its helpers, while the
                # workers it spawned (each in its own session) keep running.
                start_new_session=True,
            )
        except OSError as exc:
            raise HermesError(argv, f"could not start: {exc}") from exc

    async def _run(self, argv: Sequence[str]) -> _Completed:
        proc = await self._spawn(argv)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except TimeoutError:
            raise HermesTimeout(argv, f"timed out after {self.timeout_s:g}s") from None
        finally:
            await self._reap(proc)
        return _Completed(out.decode(errors="replace"), err.decode(errors="replace"),
                          proc.returncode)

    @staticmethod
    async def _reap(proc: asyncio.subprocess.Process) -> None:
        """Kill the call's process group if it is still running, and wait for it."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await proc.wait()
