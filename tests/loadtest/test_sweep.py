"""The capacity sweep against the mock: it must find the knee at the mock's batch size."""

from __future__ import annotations

import json

from loadtest.sweep import Level, SweepSpec, config_snippet, find_knee, sweep, table


async def test_sweep_finds_the_mock_batch_size(mock_llm, tmp_path):
    """Hazard: a sweep that recommends the concurrency with the best-looking number (the
    ceiling of the range) instead of where doubling stops paying."""
    mock = await mock_llm(batch_size=4, ttft_s=0.01, tpot_s=0.004, thrash=0.8)
    spec = SweepSpec(url=mock.url, model="m", max_concurrency=32, step_s=1.5,
                     time_limit_s=60, prompt_tokens=50, output_tokens=16, progress=False)
    result = await sweep(spec)
    assert result["recommended_max_in_flight"] == 4, table(result)
    assert result["stopped"] == "past the knee"
    assert [lv["concurrency"] for lv in result["levels"]] == [1, 2, 4, 8]
    assert all(lv["failed"] == 0 and lv["tpot_p50_s"] for lv in result["levels"])
    assert "max_in_flight: 4" in config_snippet(result, mock.url)
    json.dumps(result)


def test_knee_rules():
    """Gain under 10% stops; so does TPOT past twice its value at concurrency 1."""
    def level(c: int, tps: float, tpot: float) -> Level:
        lv = Level(c, requests=10, seconds=1.0, output_tokens=int(tps))
        lv.tpot = [tpot]
        return lv

    flat = [level(1, 100, 0.01), level(2, 200, 0.01), level(4, 210, 0.01)]
    assert find_knee(flat, 0.1, 2.0) == 2
    slow = [level(1, 100, 0.01), level(2, 190, 0.01), level(4, 300, 0.025)]
    assert find_knee(slow, 0.1, 2.0) == 2
    assert find_knee([level(1, 100, 0.01), level(2, 200, 0.01)], 0.1, 2.0) == 2
