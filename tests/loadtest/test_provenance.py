"""Where the numbers came from: the commit and the machine (loadtest.provenance)."""

from __future__ import annotations

import re

from loadtest.provenance import code_version, machine_info, machine_section


def test_code_version_names_a_commit() -> None:
    version = code_version()
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", version) or version.startswith("unknown")


def test_machine_section_is_one_table_row_of_what_was_found() -> None:
    info = machine_info()
    assert int(info["nproc"]) >= 1 and info["python"].count(".") == 2
    section = machine_section(info)
    assert section.startswith("## Machine\n")
    row = next(line for line in section.splitlines() if line.startswith(f"| {info['nproc']} |"))
    assert row.count("|") == 10 and info["aiohttp"] in row and info["redis"] in row
