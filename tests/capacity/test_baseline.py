"""The no-load baseline: the ratio a window is judged by, and how windows move the baseline."""

from __future__ import annotations

import pytest

from proxy.capacity.baseline import BASELINE_ALPHA, Baseline
from proxy.capacity.signals import WindowStats


def _window(tpot_s: float | None, ttft_s: float | None) -> WindowStats:
    return WindowStats(samples=8, errors=0, tpot_s=tpot_s, ttft_s=ttft_s)


def test_ratio_is_the_worse_signal_with_ttft_at_half_weight() -> None:
    """TTFT is noisy: doubling it alone must read as 1.5, not as 2."""
    base = Baseline(tpot_s=0.02, ttft_s=0.1)
    assert base.ratio(_window(0.03, 0.1)) == pytest.approx(1.5)
    assert base.ratio(_window(0.02, 0.2)) == pytest.approx(1.5)
    assert base.ratio(_window(0.01, 0.05)) == 1.0  # faster than the baseline: never below 1


def test_no_baseline_yet_compares_as_no_load() -> None:
    """An unmeasured baseline must not read as overload (nor divide by zero)."""
    assert Baseline().ratio(_window(0.5, 2.0)) == 1.0


def test_following_moves_a_little_and_taking_replaces() -> None:
    """A lucky fast window moves the baseline by a share only; a missing median keeps the old."""
    base = Baseline(tpot_s=0.02, ttft_s=0.1)
    followed = base.followed(_window(0.01, None))
    assert followed.tpot_s == pytest.approx(0.02 - BASELINE_ALPHA * 0.01)
    assert followed.ttft_s == 0.1
    assert base.taken(_window(None, 0.3)) == Baseline(tpot_s=0.02, ttft_s=0.3)
    assert Baseline().followed(_window(0.04, 0.2)) == Baseline(tpot_s=0.04, ttft_s=0.2)
