"""The soak's outputs and its section of the benchmarks page."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from loadtest.soak_report import write_outputs, write_report
from loadtest.soak_result import SoakResult, SoakSpec


def test_report_replaces_only_its_own_section(tmp_path: Path) -> None:
    spec = {**asdict(SoakSpec(minutes=30, rate=20)), "out": str(Path.cwd() / "results/soak")}
    result = SoakResult(spec=spec, machine={"cpu": "cpu", "cores": 2, "python": "3.11",
                                            "commit": "abc", "dirty": False},
                        started_at=0.0, elapsed_s=1800.0, requests=10,
                        by_cause={"200": 9, "client left (planned)": 1},
                        samples=[{"t": 0, "rss_kib": 40_000}, {"t": 1800, "rss_kib": 41_000}])
    out = tmp_path / "out"
    png = next(p for p in write_outputs(result, out) if p.suffix == ".png")
    page = tmp_path / "docs" / "benchmarks.md"
    page.parent.mkdir()
    other = "<!-- loadtest:overload begin -->\n## Overload\nkept\n<!-- loadtest:overload end -->"
    page.write_text("# Benchmarks\n\n" + other + "\n")
    for _ in range(2):  # a second run replaces the section, it does not append another
        write_report(result, page, png)
    text = page.read_text()
    assert other in text and text.count("## Soak") == 1
    assert "python -m loadtest soak --minutes 30 --rate 20 --out results/soak" in text
    assert "Proxy RSS: start 39.1 MiB, end 40.0 MiB, max 40.0 MiB" in text
    assert "](img/soak-rss.png)" in text and (page.parent / "img" / "soak-rss.png").exists()
