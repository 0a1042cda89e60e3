"""The soak runs end to end in half a minute: nothing held after the drain, outputs written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.soak import SoakSpec, run_soak, write_outputs


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
