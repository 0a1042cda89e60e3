"""The Hermes values: what ``--max`` means per version, and what a board's counts add up to."""

from __future__ import annotations

import pytest

from proxy.dispatcher.hermes_model import BoardCounts, HermesVersion, MaxSemantics, max_argument


def test_version_semantics_boundary() -> None:
    assert HermesVersion.parse("Hermes Agent v0.13.0").max_semantics is MaxSemantics.RUNNING
    assert HermesVersion.parse("Hermes Agent v0.12.9 (x)").max_semantics is MaxSemantics.SPAWNS
    with pytest.raises(ValueError):
        HermesVersion.parse("Hermes Agent (dev)")


@pytest.mark.parametrize(
    ("semantics", "running", "grant", "expected"),
    [
        (MaxSemantics.RUNNING, 3, 2, 5),
        (MaxSemantics.SPAWNS, 3, 2, 2),
        (MaxSemantics.RUNNING, 3, 0, 0),  # --max 0: a maintenance pass, spawns nothing
        (MaxSemantics.SPAWNS, 3, 0, 0),
    ],
)
def test_max_argument(semantics: MaxSemantics, running: int, grant: int, expected: int) -> None:
    assert max_argument(semantics, running, grant) == expected


def test_board_counts_ready_includes_review_and_promotable() -> None:
    c = BoardCounts("a", {"ready": 1, "review": 2, "todo": 3}, promotable=2)
    assert c.ready == 5
