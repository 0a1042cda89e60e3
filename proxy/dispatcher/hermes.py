"""A small async client for the real ``hermes`` CLI, and a read-only probe of its board files.

What the CLI does, measured on hermes-agent 0.19.0 (see docs/hermes.md):

* every command exits 0, errors included: an unknown board prints to stderr and nothing to
  stdout. So a call succeeds only when stdout is one JSON document of the expected shape and
  stderr is empty (minus lines the operator chose to ignore); the exit status is checked too;
* ``kanban list`` recomputes ready tasks (a write), so running/ready counts come from
  ``kanban boards list --json`` (per-status counts of every board, no recompute) or from
  :class:`SQLiteProbe`, which opens each board database with ``mode=ro`` and never writes;
* ``kanban dispatch --max N`` caps the board's *running* tasks at N (a live cap, PR #23295,
  every PyPI release since 0.13.0); earlier builds capped only the spawns of one pass. The
  translation lives in :func:`max_argument`; when the version is unknown we assume the old
  meaning, which can only under-spawn;
* ``dispatch --max 0`` spawns nothing under either meaning: a maintenance pass that reclaims
  crashed or stale workers and promotes tasks whose parents finished;
* workers are started detached (their own session), so killing a timed-out ``hermes`` call
  never kills the workers it already spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import re
import signal
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .helper import DispatchHelper, HelperFailed, HelperUnavailable

#: first release whose ``dispatch --max`` counts already-running tasks (PR #23295)
LIVE_CAP_SINCE = (0, 13, 0)
#: statuses a dispatch pass can start a worker for
SPAWNABLE = ("ready", "review")
#: statuses that still need the dispatcher (reclaim, promotion, spawning)
UNFINISHED = ("todo", "ready", "review", "running", "blocked", "scheduled", "triage")
#: statuses always exported on /metrics (0 when a board has none)
REPORTED = ("triage", "todo", "ready", "running", "blocked", "done", "archived")
#: a run that ended longer ago than this is not looked at for a live worker (a pid that old
#: may belong to another process by now)
FINISHING_WINDOW_S = 600
#: fields of ``dispatch --json`` that name workers that failed: died, ran past their limit,
#: or were blocked after too many failures
WORKER_FAILURES = ("crashed", "timed_out", "auto_blocked")

_VERSION_RE = re.compile(r"\bv?(\d+)\.(\d+)\.(\d+)\b")
_STDERR_EXCERPT = 300


class HermesError(Exception):
    """A ``hermes`` call failed: non-JSON stdout, text on stderr, bad exit, or unexpected shape."""

    def __init__(self, command: Sequence[str], reason: str, stderr: str = "") -> None:
        self.command = tuple(command)
        self.reason = reason
        self.stderr = stderr
        detail = f": {stderr.strip()[:_STDERR_EXCERPT]}" if stderr.strip() else ""
        super().__init__(f"`{' '.join(self.command)}` {reason}{detail}")


class HermesTimeout(HermesError):
    """A ``hermes`` call ran past its timeout and was killed."""


class MaxSemantics(enum.Enum):
    """What ``hermes kanban dispatch --max N`` means for the installed Hermes."""

    #: N caps running tasks on the board (0.13.0 and later)
    RUNNING = "running"
    #: N caps the spawns of one pass (builds before PR #23295)
    SPAWNS = "spawns"


@dataclass(frozen=True, slots=True, order=True)
class HermesVersion:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> HermesVersion:
        match = _VERSION_RE.search(text)
        if match is None:
            raise ValueError(f"no version number in {text[:80]!r}")
        return cls(int(match[1]), int(match[2]), int(match[3]))

    @property
    def max_semantics(self) -> MaxSemantics:
        if (self.major, self.minor, self.patch) >= LIVE_CAP_SINCE:
            return MaxSemantics.RUNNING
        return MaxSemantics.SPAWNS

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def max_argument(semantics: MaxSemantics, running: int, grant: int) -> int:
    """The ``--max`` that lets a board start at most ``grant`` workers beyond ``running``.

    Under the live-cap meaning Hermes recounts running tasks itself; if some finished since we
    counted, it may start more than ``grant``, but the board still ends at or below
    ``running + grant``, which is what the global cap was computed with.
    """
    if grant <= 0:
        return 0
    if semantics is MaxSemantics.RUNNING:
        return running + grant
    return grant


@dataclass(frozen=True, slots=True)
class BoardCounts:
    """Task counts of one board, by status."""

    slug: str
    by_status: Mapping[str, int] = field(default_factory=dict)
    #: ``todo`` tasks whose parents are all done, ready at the next pass; None: not known
    #: (the CLI does not say, the SQLite probe does)
    promotable: int | None = None
    db_path: str | None = None
    #: Unix time since which the oldest ready task is ready; None: unknown (the CLI does not
    #: say) or nothing ready
    oldest_ready_at: float | None = None
    #: tasks no longer running whose worker process is still alive: a worker makes its final
    #: LLM call after ``kanban_complete`` has already marked its task done, so each of these
    #: may still ask the GPU; empty when not known (the CLI's counts cannot tell)
    finishing: frozenset[str] = frozenset()

    @property
    def running(self) -> int:
        return self.by_status.get("running", 0)

    @property
    def ready(self) -> int:
        """Tasks the next dispatch pass may start a worker for."""
        return sum(self.by_status.get(s, 0) for s in SPAWNABLE) + (self.promotable or 0)

    @property
    def todo(self) -> int:
        return self.by_status.get("todo", 0)

    @property
    def unfinished(self) -> int:
        return sum(self.by_status.get(s, 0) for s in UNFINISHED)


@dataclass(frozen=True, slots=True)
class DispatchOutcome:
    board: str
    max_arg: int
    spawned: tuple[str, ...]
    reclaimed: int
    crashed: tuple[str, ...]
    promoted: int
    raw: Mapping[str, Any]
    #: worker failures the pass found, by kind (see :data:`WORKER_FAILURES`)
    failures: Mapping[str, int] = field(default_factory=dict)


def _how_many(value: Any) -> int:
    """A count Hermes reports as a list of task ids or as a number; 0 when malformed."""
    if isinstance(value, list | tuple):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    return 0


class BoardProbe(Protocol):
    """Counts running and ready tasks per board without changing any board."""

    async def board_counts(self) -> dict[str, BoardCounts]: ...


def kanban_root(hermes_home: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Path:
    """The directory holding ``kanban.db`` and ``kanban/boards``, resolved as Hermes does."""
    env = os.environ if environ is None else environ
    override = env.get("HERMES_KANBAN_HOME", "").strip()
    if override:
        return Path(override).expanduser()
    native = Path(env.get("HOME") or Path.home()) / ".hermes"
    home = str(hermes_home) if hermes_home else env.get("HERMES_HOME", "")
    if not home:
        return native
    path = Path(home).expanduser()
    with contextlib.suppress(ValueError, OSError):
        path.resolve().relative_to(native.resolve())
        return native
    if path.parent.name == "profiles":
        return path.parent.parent
    return path


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


class SQLiteProbe:
    """Counts tasks by opening each board database read-only (``mode=ro``); never writes.

    Board layout as Hermes 0.19.0 keeps it: ``<root>/kanban.db`` is the ``default`` board,
    ``<root>/kanban/boards/<slug>/kanban.db`` the others, ``board.json`` marks archived ones.
    Unlike the CLI counts it also sees ``todo`` tasks whose parents are all done, which the next
    dispatch pass will promote and may start at once.
    """

    #: cheap enough for the watcher to read between ticks (no process is started)
    cheap = True

    def __init__(self, root: Path, *, busy_timeout_s: float = 2.0) -> None:
        self.root = root
        self.busy_timeout_s = busy_timeout_s

    async def board_counts(self) -> dict[str, BoardCounts]:
        return await asyncio.to_thread(self._read_all)

    def board_paths(self) -> dict[str, Path]:
        paths: dict[str, Path] = {}
        default = self.root / "kanban.db"
        if default.exists():
            paths["default"] = default
        boards = self.root / "kanban" / "boards"
        if boards.is_dir():
            for board_dir in sorted(boards.iterdir()):
                db = board_dir / "kanban.db"
                if board_dir.name == "default" or not db.exists() or _archived(board_dir):
                    continue
                paths[board_dir.name] = db
        return paths

    def _read_all(self) -> dict[str, BoardCounts]:
        return {slug: self._read(slug, db) for slug, db in self.board_paths().items()}

    def _read(self, slug: str, db: Path) -> BoardCounts:
        uri = db.resolve().as_uri() + "?mode=ro"
        started = time.monotonic()
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s)
        except sqlite3.Error as exc:
            raise HermesError(["sqlite", str(db)], f"cannot open read-only: {exc}") from exc
        try:
            rows = conn.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall()
            promotable = conn.execute(
                "SELECT COUNT(*) FROM tasks t WHERE t.status = 'todo' AND NOT EXISTS ("
                " SELECT 1 FROM task_links l JOIN tasks p ON p.id = l.parent_id"
                " WHERE l.child_id = t.id AND p.status NOT IN ('done', 'archived'))"
            ).fetchone()[0]
            # A ready task became ready when it was created or when its last parent finished.
            oldest = conn.execute(
                "SELECT MIN(MAX(t.created_at, COALESCE((SELECT MAX(p.completed_at)"
                " FROM task_links l JOIN tasks p ON p.id = l.parent_id"
                " WHERE l.child_id = t.id), 0))) FROM tasks t WHERE t.status = 'ready'"
            ).fetchone()[0]
            # Ending a run clears its worker_pid; the pid stays in the run's "spawned" event.
            ended = conn.execute(
                "SELECT e.task_id, e.payload FROM task_events e"
                " JOIN task_runs r ON r.id = e.run_id JOIN tasks t ON t.id = e.task_id"
                " WHERE e.kind = 'spawned' AND t.status != 'running' AND r.ended_at >= ?",
                (int(time.time()) - FINISHING_WINDOW_S,)
            ).fetchall()
        except sqlite3.Error as exc:
            waited = time.monotonic() - started
            raise HermesError(["sqlite", str(db)], f"read failed after {waited:.1f}s: {exc}") \
                from exc
        finally:
            conn.close()
        return BoardCounts(
            slug=slug,
            by_status={str(status): int(n) for status, n in rows},
            promotable=int(promotable),
            db_path=str(db),
            oldest_ready_at=None if oldest is None else float(oldest),
            finishing=frozenset(str(task) for task, payload in ended
                                if process_alive(_event_pid(payload))),
        )


def _archived(board_dir: Path) -> bool:
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((board_dir / "board.json").read_text(encoding="utf-8"))
        return bool(isinstance(meta, dict) and meta.get("archived"))
    return False


def _event_pid(payload: Any) -> int:
    """The pid of a ``spawned`` event's payload (``{"pid": N}``); 0 when there is none."""
    with contextlib.suppress(TypeError, ValueError):
        doc = json.loads(payload)
        if isinstance(doc, dict) and isinstance(doc.get("pid"), int):
            return int(doc["pid"])
    return 0


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie, exited but not yet reaped, does not)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat[stat.rfind(b")") + 2:][:1] not in (b"Z", b"X")
