"""The soak runs end to end in half a minute: nothing held after the drain, outputs written."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from loadtest.soak import (
    SoakResult,
    SoakSpec,
    held_permits,
    log_errors,
    run_soak,
    write_outputs,
    write_report,
)


def test_held_permits_reads_every_group_and_the_queue() -> None:
    doc = {
        "queue": {"depth": 2},
        "models": {"m": {"in_flight": 1, "queued": 2}},
        "upstreams": {"up": {"in_flight": 0, "queued": 0}},
        "clients": {"c": {"in_flight": 1, "queued": 0}},
    }
    assert held_permits(doc) == {"queue": 2, "models.m.in_flight": 1, "models.m.queued": 2,
                                 "clients.c.in_flight": 1}
    assert held_permits({"queue": {"depth": 0}, "models": {"m": {"in_flight": 0}}}) == {}


def test_log_errors_counts_tracebacks_by_message_and_exception() -> None:
    log = (
        "2026-01-01 12:00:00,000 ERROR aiohttp.server: Error handling request\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "ValueError: boom\n"
        "2026-01-01 12:00:01,000 INFO other: fine\n"
    )
    assert log_errors(log) == {"ERROR aiohttp.server: Error handling request -> "
                               "ValueError: boom": 1}


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


@pytest.mark.slow
async def test_half_minute_soak(tmp_path: Path) -> None:
    result = await run_soak(SoakSpec(minutes=0.5, out=tmp_path, rate=12, sample_interval_s=1.0,
                                     client_timeout_s=15))
    paths = write_outputs(result, tmp_path)
    assert result.permits_outstanding == 0, result.outstanding
    assert result.upstream_in_flight_after == 0
    assert result.unexpected == {}, result.unexpected
    assert result.requests > 100 and sum(result.by_cause.values()) == result.requests
    assert len(result.samples) >= 20 and all(s.get("rss_kib") for s in result.samples)
    # the mix reached its fault paths
    for cause in ("200", "client left (planned)", "504 upstream_timeout", "400 invalid_json"):
        assert result.by_cause.get(cause), (cause, result.by_cause)
    assert {p.name for p in paths} == {"soak.json", "soak.md", "soak-rss.png"}
    doc = json.loads((tmp_path / "soak.json").read_text())
    assert doc["permits_outstanding"] == 0 and doc["rss_mib"]["max"] > 0
