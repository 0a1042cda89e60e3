"""The CLI client and the SQLite probe against the real ``hermes`` (hermes-agent 0.19.0).

Each test runs with ``HOME`` in a temporary directory; workers that a dispatch starts are
stopped by pid at teardown. These pin down the facts the dispatcher relies on (docs/hermes.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from proxy.dispatcher.hermes import HermesCLI
from proxy.dispatcher.hermes_model import HermesError, MaxSemantics
from proxy.dispatcher.sqlite_probe import SQLiteProbe

from .conftest import HermesHome

pytestmark = pytest.mark.hermes

DEAD_LLM_PROFILE = """\
model:
  provider: nowhere
  default: m
providers:
  nowhere:
    base_url: http://127.0.0.1:9/v1
    api_key: none
kanban:
  dispatch_in_gateway: false
"""


def _cli(hh: HermesHome) -> HermesCLI:
    return HermesCLI(hh.exe, timeout_s=60, env=hh.env)


def _fingerprint(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


async def test_version_and_max_meaning(hermes_home: HermesHome) -> None:
    version = await _cli(hermes_home).version()
    assert (version.major, version.minor) == (0, 19)
    assert version.max_semantics is MaxSemantics.RUNNING


async def test_cli_counts_match_the_read_only_probe_which_writes_nothing(
    hermes_home: HermesHome,
) -> None:
    hh = hermes_home
    hh.create_board("alpha")
    a = hh.create_task("alpha", "parent a")
    b = hh.create_task("alpha", "parent b")
    child_a = hh.create_task("alpha", "child of a", parents=(a,))
    hh.create_task("alpha", "child of a and b", parents=(a, b))
    hh.create_task("default", "on the default board")
    hh.run("kanban", "--board", "alpha", "complete", a, "--result", "ok")
    # Completing a promotes its children at once; put one back the way a crash between
    # completion and promotion would leave it, to see the probe count it as promotable.
    assert hh.statuses("alpha")[child_a] == "ready"
    with contextlib.closing(sqlite3.connect(hh.db_path("alpha"))) as conn, conn:
        conn.execute("UPDATE tasks SET status = 'todo' WHERE id = ?", (child_a,))

    cli_counts = await _cli(hh).board_counts()
    board_dir = hh.db_path("alpha").parent
    before = _fingerprint(board_dir)
    probe = SQLiteProbe(hh.root)
    sql_counts = await probe.board_counts()
    after = _fingerprint(board_dir)
    # The database is not written. SQLite may add the -wal/-shm sidecars a WAL reader needs
    # (every hermes command does the same); the -wal stays empty.
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) <= {"kanban.db-wal", "kanban.db-shm"}
    if "kanban.db-wal" not in before:
        assert (board_dir / "kanban.db-wal").stat().st_size == 0

    assert set(cli_counts) == set(sql_counts) == {"default", "alpha"}
    for slug in cli_counts:
        assert cli_counts[slug].by_status == sql_counts[slug].by_status
    alpha = sql_counts["alpha"]
    assert alpha.by_status == {"ready": 1, "todo": 2, "done": 1}
    # "child of a" can be promoted (a is done); "child of a and b" waits for b.
    assert alpha.promotable == 1 and alpha.ready == 2
    assert cli_counts["alpha"].promotable is None and cli_counts["alpha"].ready == 1
    # The oldest ready task ("parent b") has been ready since it was created; the CLI's
    # counts cannot tell.
    with contextlib.closing(sqlite3.connect(hh.db_path("alpha"))) as conn:
        created_b = conn.execute("SELECT created_at FROM tasks WHERE id = ?", (b,)).fetchone()[0]
    assert alpha.oldest_ready_at == float(created_b)
    assert cli_counts["alpha"].oldest_ready_at is None


async def test_errors_exit_zero_and_are_caught(hermes_home: HermesHome) -> None:
    done = hermes_home.run("kanban", "--board", "nope", "dispatch", "--max", "1", "--json")
    assert done.returncode == 0 and done.stdout == "" and "does not exist" in done.stderr
    with pytest.raises(HermesError, match="does not exist"):
        await _cli(hermes_home).dispatch("nope", 1)


async def test_max_zero_promotes_but_spawns_nothing(hermes_home: HermesHome) -> None:
    hh = hermes_home
    hh.run("profile", "create", "worker", "--no-alias", "--no-skills")
    (hh.root / "profiles" / "worker" / "config.yaml").write_text(DEAD_LLM_PROFILE)
    parent = hh.create_task("default", "parent")
    child = hh.create_task("default", "child", parents=(parent,))
    hh.create_task("default", "ready one")
    hh.run("kanban", "complete", parent, "--result", "ok")
    # Hermes promotes children on completion; recreate the state a crash in between leaves.
    with contextlib.closing(sqlite3.connect(hh.db_path("default"))) as conn, conn:
        conn.execute("UPDATE tasks SET status = 'todo' WHERE id = ?", (child,))
    outcome = await _cli(hh).dispatch("default", 0)
    assert outcome.spawned == () and outcome.promoted == 1
    statuses = hh.statuses("default")
    assert statuses[child] == "ready" and "running" not in statuses.values()


async def test_max_counts_tasks_already_running(hermes_home: HermesHome) -> None:
    """The 0.19.0 meaning of --max N: at most N running on the board, not N more."""
    hh = hermes_home
    hh.run("profile", "create", "worker", "--no-alias", "--no-skills")
    (hh.root / "profiles" / "worker" / "config.yaml").write_text(DEAD_LLM_PROFILE)
    ids = [hh.create_task("default", f"task {i}") for i in range(4)]
    claimed = hh.run("kanban", "claim", ids[0])
    assert not claimed.stderr.strip(), claimed.stderr
    assert hh.statuses("default")[ids[0]] == "running"
    outcome = await _cli(hh).dispatch("default", 2)
    assert len(outcome.spawned) == 1
    statuses = hh.statuses("default")
    assert sum(1 for s in statuses.values() if s == "running") == 2


async def test_the_probe_sees_a_done_task_whose_worker_still_runs(
    hermes_home: HermesHome,
) -> None:
    """A worker's final LLM call comes after ``kanban_complete`` marked its task done: the
    probe reports such tasks (their recorded worker pid alive) as ``finishing``, and stops
    once the process is gone."""
    hh = hermes_home
    task = hh.create_task("default", "one", assignee=None)
    claimed = hh.run("kanban", "claim", task)
    assert not claimed.stderr.strip(), claimed.stderr
    worker = subprocess.Popen(["sleep", "60"])  # noqa: ASYNC220 - returns at once
    try:
        with contextlib.closing(sqlite3.connect(hh.db_path("default"))) as conn, conn:
            # what Hermes's dispatch records for the worker it spawned
            run_id = conn.execute("SELECT current_run_id FROM tasks WHERE id = ?",
                                  (task,)).fetchone()[0]
            conn.execute("UPDATE tasks SET worker_pid = ? WHERE id = ?", (worker.pid, task))
            conn.execute("UPDATE task_runs SET worker_pid = ? WHERE id = ?", (worker.pid, run_id))
            conn.execute("INSERT INTO task_events (task_id, run_id, kind, payload, created_at)"
                         " VALUES (?, ?, 'spawned', ?, strftime('%s', 'now'))",
                         (task, run_id, json.dumps({"pid": worker.pid})))
        hh.run("kanban", "complete", task, "--result", "ok")
        assert hh.statuses("default")[task] == "done"
        probe = SQLiteProbe(hh.root)
        assert (await probe.board_counts())["default"].finishing == {task}
    finally:
        worker.kill()
        worker.wait()
    assert (await probe.board_counts())["default"].finishing == frozenset()
