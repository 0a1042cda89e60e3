"""The CLI client's strictness, against a stand-in ``hermes`` that misbehaves on request.

The real CLI exits 0 on errors (see docs/hermes.md), so success must be judged from the output:
one JSON document on stdout, nothing on stderr, and a timeout on every call.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from proxy.dispatcher.hermes import HermesCLI
from proxy.dispatcher.hermes_model import HermesError, HermesTimeout, HermesVersion, MaxSemantics

FAKE = r'''
import json, os, sys, time
mode = os.environ.get("FAKE_HERMES_MODE", "ok")
with open(os.environ["FAKE_HERMES_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")
args = sys.argv[1:]
if args == ["--version"]:
    print(os.environ.get("FAKE_HERMES_VERSION", "Hermes Agent v0.19.0 (2026.7.20)"), flush=True)
    time.sleep(60)  # the real one goes on to ask PyPI for updates
    sys.exit(0)
if mode == "sleep":
    time.sleep(60)
if mode == "stderr":
    print("kanban: board 'nope' does not exist.", file=sys.stderr)
    sys.exit(0)
if mode == "warning":
    print("DeprecationWarning: something harmless", file=sys.stderr)
if mode == "nonjson":
    print("Reclaimed:    0\nSpawned:      1")
    sys.exit(0)
if mode == "rc1":
    print("{}")
    sys.exit(1)
if mode == "empty":
    sys.exit(0)
if args[:3] == ["kanban", "boards", "list"]:
    print(json.dumps([
        {"slug": "default", "counts": {}, "archived": False, "db_path": "/x/kanban.db"},
        {"slug": "alpha", "counts": {"running": 2, "ready": 3, "review": 1, "todo": 4,
                                     "done": 7}, "archived": False},
        {"slug": "old", "counts": {"ready": 9}, "archived": True},
    ]))
elif "dispatch" in args:
    print(json.dumps({"reclaimed": 1, "crashed": ["t_c"], "promoted": 2,
                      "spawned": [{"task_id": "t_1", "assignee": "w", "workspace": "/w"}]}))
'''


@pytest.fixture
def fake_hermes(tmp_path: Path) -> tuple[str, Path]:
    exe = tmp_path / "hermes"
    exe.write_text(f"#!{sys.executable}\n{FAKE}")
    exe.chmod(0o755)
    return str(exe), tmp_path / "calls.log"


def _cli(fake: tuple[str, Path], mode: str = "ok", timeout_s: float = 10.0,
         **kwargs: object) -> HermesCLI:
    exe, log = fake
    env = {**os.environ, "FAKE_HERMES_MODE": mode, "FAKE_HERMES_LOG": str(log)}
    return HermesCLI(exe, timeout_s=timeout_s, env=env, **kwargs)  # type: ignore[arg-type]


async def test_version_from_the_first_line_without_waiting_for_the_rest(
    fake_hermes: tuple[str, Path],
) -> None:
    started = time.monotonic()
    version = await _cli(fake_hermes).version()
    assert version == HermesVersion(0, 19, 0)
    assert version.max_semantics is MaxSemantics.RUNNING
    assert time.monotonic() - started < 5


async def test_board_counts(fake_hermes: tuple[str, Path]) -> None:
    boards = await _cli(fake_hermes).board_counts()
    assert set(boards) == {"default", "alpha"}  # archived boards are not dispatched
    alpha = boards["alpha"]
    assert (alpha.running, alpha.ready, alpha.todo) == (2, 4, 4)
    assert alpha.promotable is None  # the CLI cannot tell
    assert alpha.unfinished == 10


async def test_dispatch_command_and_parse(fake_hermes: tuple[str, Path]) -> None:
    outcome = await _cli(fake_hermes).dispatch("alpha", 5)
    assert outcome.spawned == ("t_1",)
    assert (outcome.reclaimed, outcome.crashed, outcome.promoted) == (1, ("t_c",), 2)
    calls = fake_hermes[1].read_text().splitlines()
    assert calls[-1] == '["kanban", "--board", "alpha", "dispatch", "--max", "5", "--json"]'


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("stderr", "stderr: kanban: board 'nope' does not exist"),
        ("nonjson", "non-JSON"),
        ("empty", "non-JSON"),
        ("rc1", "status 1"),
        ("warning", "stderr"),
    ],
)
async def test_exit_zero_is_not_success(fake_hermes: tuple[str, Path], mode: str,
                                        match: str) -> None:
    with pytest.raises(HermesError, match=match):
        await _cli(fake_hermes, mode).dispatch("alpha", 1)


async def test_ignored_stderr_lines(fake_hermes: tuple[str, Path]) -> None:
    cli = _cli(fake_hermes, "warning", ignore_stderr=[re.compile(r"^DeprecationWarning")])
    assert (await cli.dispatch("alpha", 1)).spawned == ("t_1",)


async def test_timeout_kills_the_call(fake_hermes: tuple[str, Path]) -> None:
    started = time.monotonic()
    with pytest.raises(HermesTimeout):
        await _cli(fake_hermes, "sleep", timeout_s=0.5).board_counts()
    assert time.monotonic() - started < 5


async def test_missing_executable(tmp_path: Path) -> None:
    with pytest.raises(HermesError, match="could not start"):
        await HermesCLI(str(tmp_path / "nope")).board_counts()
