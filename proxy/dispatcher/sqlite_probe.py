"""A read-only probe of Hermes's board files: task counts without starting a process.

``kanban list`` recomputes ready tasks (a write), so the companion either asks the CLI for
``kanban boards list --json`` or opens each board database itself with ``mode=ro``, which
never writes and is cheap enough for the watcher between ticks. The board files live where
:func:`kanban_root` says, resolved as Hermes 0.19.0 does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .hermes_model import BoardCounts, HermesError

#: a run that ended longer ago than this is not looked at for a live worker (a pid that old
#: may belong to another process by now)
FINISHING_WINDOW_S = 600


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
