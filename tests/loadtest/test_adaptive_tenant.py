"""The tenant experiment's figures from the mock's per-request record."""

from __future__ import annotations

from loadtest.adaptive_tenant import OUR_MODEL, TENANT_MODEL, cap_trace, engine_figures
from loadtest.mock_ttft import FirstToken


def test_engine_figures_split_ours_from_the_tenants_by_phase_and_model() -> None:
    """Hazard: the tenant's requests (or a phase's neighbours) counted in our figures."""
    wall0 = 1000.0
    samples = [FirstToken(wall0 + 1, OUR_MODEL, 0.02, 0.0),      # before the window
               FirstToken(wall0 + 12, OUR_MODEL, 0.02, 0.0),
               FirstToken(wall0 + 13, OUR_MODEL, 0.12, 0.1),
               FirstToken(wall0 + 14, TENANT_MODEL, 0.2, 0.18),
               FirstToken(wall0 + 25, OUR_MODEL, 9.0, 9.0)]      # after it
    f = engine_figures(samples, wall0, 10, 25)
    assert (f["ours"]["count"], f["tenant"]["count"], f["all"]["count"]) == (2, 1, 3)
    assert f["ours"]["ttft_p50_s"] == 0.02 and f["ours"]["ttft_p99_s"] == 0.12
    assert f["ours"]["waited"] == 1 and f["tenant"]["queue_p99_s"] == 0.18


def test_cap_trace_medians_and_changes() -> None:
    caps = [(0.0, 1), (5.0, 8), (12.0, 9), (14.0, 8), (26.0, 4), (30.0, None), (36.0, 5),
            (40.0, 4)]
    trace = cap_trace(caps, phase=25, settle=10)
    assert (trace["before_median"], trace["after_median"], trace["after_range"]) == (8, 4, [4, 5])
    assert trace["changes"] == [(0.0, 1), (5.0, 8), (12.0, 9), (14.0, 8), (26.0, 4), (36.0, 5),
                                (40.0, 4)]
