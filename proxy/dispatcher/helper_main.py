"""Runs inside Hermes's own interpreter: ``hermes kanban --board B dispatch --max N --json``
without starting a Python process per pass.

Why: each CLI call is a fresh interpreter that builds Hermes's whole argument parser -- about
0.7 s of CPU and 1.1 s of wall time on the bench machine, spent exactly when the worker it
starts needs the same CPUs, and a window in which the queue can move past what the decision
saw. This script imports Hermes once (the same module-level start-up the CLI runs: profile
override, ``.env``), then serves passes over a pipe, one JSON object per line:

    -> {"ready": true, "version": "0.19.0"}             once, after the imports
    <- {"id": 1, "board": "b1", "max": 3}
    -> {"id": 1, "doc": {... what --json prints ...}, "stderr": "", "error": null}

Each pass is what the CLI's ``kanban --board B dispatch`` does in 0.19.0: refuse a board that
does not exist, pin the board for the call, ``init_db``, read ``kanban.*`` from the config,
``dispatch_once``. Workers are started by Hermes's own spawn (detached, their own session);
they are this process's children, so each pass first reaps the ones that exited, as the
gateway's embedded dispatcher does. It uses the standard library and Hermes only: it is run by
another interpreter than the companion's. It exits when its input closes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from typing import Any


def _pass(kb: Any, load_config: Any, board: str, max_spawn: int) -> dict[str, Any]:
    slug = board.strip().lower()
    if slug != kb.DEFAULT_BOARD and not kb.board_exists(slug):
        raise LookupError(f"kanban: board {slug!r} does not exist")
    with kb.scoped_current_board(slug):
        kb.init_db()
        cfg = load_config()
        kanban = cfg.get("kanban", {}) if isinstance(cfg, dict) else {}
        kanban = kanban if isinstance(kanban, dict) else {}
        with kb.connect_closing() as conn:
            res = kb.dispatch_once(
                conn,
                max_spawn=max_spawn,
                max_in_progress=_positive(kanban.get("max_in_progress")),
                failure_limit=kb.DEFAULT_SPAWN_FAILURE_LIMIT,
                default_assignee=(kanban.get("default_assignee") or "").strip() or None,
                max_in_progress_per_profile=_positive(kanban.get("max_in_progress_per_profile")),
            )
    return {
        "reclaimed": res.reclaimed,
        "crashed": res.crashed,
        "timed_out": res.timed_out,
        "stale": res.stale,
        "auto_blocked": res.auto_blocked,
        "promoted": res.promoted,
        "spawned": [{"task_id": t, "assignee": who, "workspace": ws}
                    for t, who, ws in res.spawned],
        "skipped_unassigned": res.skipped_unassigned,
        "skipped_nonspawnable": res.skipped_nonspawnable,
        "skipped_per_profile_capped": [{"task_id": t, "assignee": who, "current": n}
                                       for t, who, n in res.skipped_per_profile_capped],
        "auto_assigned_default": res.auto_assigned_default,
    }


def _positive(value: Any) -> int | None:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None


def main() -> int:
    # Replies go to a private copy of stdout; whatever Hermes prints goes to stderr.
    replies = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(doc: dict[str, Any]) -> None:
        replies.write(json.dumps(doc) + "\n")

    sys.argv = ["hermes"]
    try:
        import hermes_cli
        import hermes_cli.main  # the CLI's own start-up: profile override, .env
        from hermes_cli import kanban_db as kb
        from hermes_cli.config import load_config
    except Exception as exc:  # noqa: BLE001 - told to the companion, which uses the CLI
        reply({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    reply({"ready": True, "version": str(getattr(hermes_cli, "__version__", ""))})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        out, err = io.StringIO(), io.StringIO()
        doc: dict[str, Any] | None = None
        error = None
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                kb.reap_worker_zombies()
                doc = _pass(kb, load_config, str(request["board"]), int(request["max"]))
            except Exception as exc:  # noqa: BLE001 - one pass fails, the helper goes on
                error = f"{type(exc).__name__}: {exc}"
        reply({"id": request.get("id"), "doc": doc, "stdout": out.getvalue(),
               "stderr": err.getvalue(), "error": error})
    kb.reap_worker_zombies()
    return 0


if __name__ == "__main__":
    sys.exit(main())
