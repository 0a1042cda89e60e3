"""Dispatch passes through the helper in Hermes's own interpreter, against the real ``hermes``
(hermes-agent 0.19.0): the same outcome as the CLI, without a process per pass, and the CLI
whenever the helper cannot be the same Hermes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import sys
from pathlib import Path

import pytest

from proxy.dispatcher.helper import DispatchHelper, helper_for, hermes_interpreter
from proxy.dispatcher.hermes import HermesCLI
from proxy.dispatcher.hermes_model import HermesError

from .conftest import HermesHome
from .test_hermes_real import DEAD_LLM_PROFILE

#: a ``hermes`` that logs each call, then is the real one (same interpreter, same package)
LOGGING_HERMES = """#!{python}
import os, sys
with open(os.environ["HERMES_CALL_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
from hermes_cli.main import main
sys.exit(main())
"""


def _script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def logged(hermes_home: HermesHome, tmp_path: Path) -> tuple[HermesHome, Path]:
    """``hermes_home`` whose ``hermes`` (for us and for the workers) logs every call."""
    python = hermes_interpreter(hermes_home.exe)
    if python is None:
        pytest.skip(f"{hermes_home.exe} is not a Python console script")
    calls = tmp_path / "calls.log"
    exe = _script(tmp_path / "hermes", LOGGING_HERMES.format(python=python))
    hermes_home.exe = exe
    hermes_home.env.update(HERMES_BIN=exe, HERMES_CALL_LOG=str(calls))
    return hermes_home, calls


def _cli(hh: HermesHome, *, helper: bool) -> HermesCLI:
    return HermesCLI(hh.exe, timeout_s=60, env=hh.env,
                     helper=helper_for(hh.exe, hh.env, 60, "0.19.0") if helper else None)


def _worker_board(hh: HermesHome, n: int) -> list[str]:
    hh.run("profile", "create", "worker", "--no-alias", "--no-skills")
    (hh.root / "profiles" / "worker" / "config.yaml").write_text(DEAD_LLM_PROFILE)
    return [hh.create_task("default", f"task {i}") for i in range(n)]


@pytest.mark.hermes
@pytest.mark.parametrize("via_helper", [False, True], ids=["cli", "helper"])
async def test_max_counts_running_tasks_either_way(logged: tuple[HermesHome, Path],
                                                   via_helper: bool) -> None:
    """The helper keeps the 0.19.0 meaning of --max N (at most N running on the board) and
    spawns real workers, as the CLI does."""
    hh, _ = logged
    ids = _worker_board(hh, 4)
    hh.run("kanban", "claim", ids[0])
    hermes = _cli(hh, helper=via_helper)
    try:
        outcome = await hermes.dispatch("default", 2)
        again = await hermes.dispatch("default", 2)
    finally:
        await hermes.close()
    assert len(outcome.spawned) == 1 and again.spawned == ()
    statuses = hh.statuses("default")
    assert sum(1 for s in statuses.values() if s == "running") == 2
    assert len(hh.worker_pids("default")) == 1  # the spawned worker's pid is recorded


@pytest.mark.hermes
@pytest.mark.parametrize("via_helper", [False, True], ids=["cli", "helper"])
async def test_a_missing_board_fails_either_way(logged: tuple[HermesHome, Path],
                                                via_helper: bool) -> None:
    hh, _ = logged
    hermes = _cli(hh, helper=via_helper)
    try:
        with pytest.raises(HermesError, match="does not exist"):
            await hermes.dispatch("nope", 1)
        assert not (hh.root / "kanban" / "boards" / "nope").exists()  # not created either
    finally:
        await hermes.close()


@pytest.mark.hermes
@pytest.mark.parametrize("via_helper", [False, True], ids=["cli", "helper"])
async def test_max_zero_promotes_but_spawns_nothing_either_way(
        logged: tuple[HermesHome, Path], via_helper: bool) -> None:
    hh, _ = logged
    _worker_board(hh, 0)
    parent = hh.create_task("default", "parent")
    child = hh.create_task("default", "child", parents=(parent,))
    hh.run("kanban", "complete", parent, "--result", "ok")
    with contextlib.closing(sqlite3.connect(hh.db_path("default"))) as conn, conn:
        conn.execute("UPDATE tasks SET status = 'todo' WHERE id = ?", (child,))
    hermes = _cli(hh, helper=via_helper)
    try:
        outcome = await hermes.dispatch("default", 0)
    finally:
        await hermes.close()
    assert outcome.spawned == () and outcome.promoted == 1
    assert hh.statuses("default")[child] == "ready"


@pytest.mark.hermes
async def test_passes_start_no_hermes_process(logged: tuple[HermesHome, Path]) -> None:
    """Hazard: a ``hermes kanban dispatch`` process per pass costs ~1.1 s and ~0.7 s of CPU
    on two cores, while the worker it starts needs the same CPUs; through the helper the
    passes run in one process, and only the workers start ``hermes``."""
    hh, calls = logged
    _worker_board(hh, 3)
    calls.write_text("")
    hermes = _cli(hh, helper=True)
    try:
        spawned = [len((await hermes.dispatch("default", n)).spawned) for n in (1, 2, 2)]
    finally:
        await hermes.close()
    assert spawned == [1, 1, 0]
    lines = [line for line in calls.read_text().splitlines() if line.strip()]
    assert not [line for line in lines if "dispatch" in line.split()], lines
    assert sum(1 for line in lines if "chat" in line.split()) == 2  # the two workers


async def test_the_cli_does_the_passes_when_the_helper_cannot_be_the_same_hermes(
        tmp_path: Path) -> None:
    """A wrapper that is not a Python script, or a helper importing another Hermes version,
    leaves the passes to the CLI (never a pass that silently does nothing)."""
    shell = _script(tmp_path / "hermes-sh", "#!/bin/sh\nexec true\n")
    assert hermes_interpreter(shell) is None
    assert helper_for(shell, None, 5, None) is None
    env_python = _script(tmp_path / "hermes-env",
                         f"#!/usr/bin/env {Path(sys.executable).name}\n")
    assert hermes_interpreter(env_python) is not None
    fake = _script(tmp_path / "hermes-fake", f"#!{sys.executable}\n" + (
        "import json, sys\n"
        "print(json.dumps({'spawned': [{'task_id': 't1'}], 'promoted': 0}))\n"))
    log_dir = tmp_path / "home"
    log_dir.mkdir()
    helper = DispatchHelper(sys.executable, env={**os.environ, "HOME": str(log_dir)},
                            timeout_s=30, expect_version="9.9.9")
    hermes = HermesCLI(fake, timeout_s=30, helper=helper)
    try:
        outcome = await hermes.dispatch("b1", 1)
    finally:
        await hermes.close()
    if helper.version is None and helper.given_up is None:
        pytest.skip("hermes_cli is not importable here: nothing to compare versions with")
    assert outcome.spawned == ("t1",)  # from the fake CLI
    assert hermes.helper is None and helper.given_up is not None
    assert "9.9.9" in helper.given_up
