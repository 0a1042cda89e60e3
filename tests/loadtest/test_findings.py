"""The key-number table: verdicts, hard failures and how figures are shown (loadtest.findings)."""

from __future__ import annotations

from loadtest.findings import INFO, MISS, PASS, Findings, fmt_ms, fmt_num, fmt_pct


def test_a_missed_hard_check_is_a_failure_and_a_soft_one_is_not() -> None:
    f = Findings()
    f.check("lost", 2, "2", 0, at_most=True, target_text="0", hard=True)
    f.check("share", 0.5, "50%", 0.9, at_most=False, target_text=">= 90%")
    f.check("ok", 5, "5", 10, at_most=True, target_text="<= 10", hard=True)
    assert [row[3] for row in f.rows] == [MISS, MISS, PASS]
    assert f.failed == ["lost: 2 (target 0)"]


def test_a_figure_without_a_target_or_a_value_is_shown_not_judged() -> None:
    f = Findings()
    f.check("no target", 1.0, "1", None, at_most=True, target_text="<= 3")
    f.check("no value", None, "-", 3.0, at_most=True, target_text="<= 3", hard=True)
    assert f.rows == [("no target", "1", "", INFO), ("no value", "-", "<= 3", INFO)]
    assert f.failed == []


def test_formatting() -> None:
    assert fmt_ms(0.01234) == "12.3" and fmt_ms(None) == "-" and fmt_ms(0.5, 0) == "500"
    assert fmt_num(2.345, ".2f") == "2.35" and fmt_num(None) == "-"
    assert fmt_pct(0.981) == "98.1%"
    assert fmt_pct(3.5) == "3.5x"  # large ratios read better as a factor
