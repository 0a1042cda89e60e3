"""The key-number table of a scenario: rows with a verdict, and the hard checks that failed."""

from __future__ import annotations

from dataclasses import dataclass, field

PASS, MISS, INFO = "met", "**MISSED**", ""


def fmt_ms(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value * 1000:.{digits}f}"


def fmt_num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def fmt_pct(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}x" if value >= 3 else f"{value * 100:.1f}%"


@dataclass
class Findings:
    """Rows of the key-number table, and the hard checks that failed."""

    #: (what, measured, target, verdict)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: machine-readable key numbers (for tests and the final report)
    numbers: dict[str, float | None] = field(default_factory=dict)

    def add(self, what: str, measured: str, target: str = "", verdict: str = INFO) -> None:
        self.rows.append((what, measured, target, verdict))

    def check(self, what: str, value: float | None, shown: str, limit: float | None,
              *, at_most: bool, target_text: str, hard: bool = False) -> None:
        """A row with a verdict; ``hard`` failures make the command exit non-zero."""
        if limit is None or value is None:
            self.add(what, shown, target_text if limit is not None else "")
            return
        ok = value <= limit if at_most else value >= limit
        self.add(what, shown, target_text, PASS if ok else MISS)
        if hard and not ok:
            self.failed.append(f"{what}: {shown} (target {target_text})")
