"""Where the board files are: ``kanban_root`` resolves the Hermes home as Hermes does (the
probe's reads of real boards are in ``test_hermes_real.py``)."""

from __future__ import annotations

from pathlib import Path

from proxy.dispatcher.sqlite_probe import kanban_root


def test_kanban_root_resolution(tmp_path: Path) -> None:
    home = tmp_path / "home"
    native = home / ".hermes"
    assert kanban_root(environ={"HOME": str(home)}) == native
    assert kanban_root(environ={"HOME": str(home),
                                "HERMES_HOME": str(native / "profiles" / "w")}) == native
    assert kanban_root(environ={"HOME": str(home), "HERMES_HOME": "/opt/data"}) == \
        Path("/opt/data")
    assert kanban_root(environ={"HOME": str(home),
                                "HERMES_HOME": "/opt/data/profiles/w"}) == Path("/opt/data")
    assert kanban_root(environ={"HOME": str(home), "HERMES_KANBAN_HOME": "/k"}) == Path("/k")
    assert kanban_root("/srv/h", environ={"HOME": str(home)}) == Path("/srv/h")
