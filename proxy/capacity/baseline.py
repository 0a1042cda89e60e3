"""The no-load latency an adaptive cap compares each window with (see ``controller.py``).

The first window's medians, then a slow moving average of the windows near it: a lucky fast
window moves it a little, an overloaded one not at all. A value, not a tracker: a controller
replaced by a reload keeps its predecessor's baseline by sharing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .signals import WindowStats

#: weight of a window near the baseline in the baseline's moving average
BASELINE_ALPHA = 0.1
#: share of the TTFT ratio's excess that counts (TPOT counts whole)
TTFT_WEIGHT = 0.5


def _moved(old: float | None, new: float | None) -> float | None:
    if new is None:
        return old
    return new if old is None else old + BASELINE_ALPHA * (new - old)


@dataclass(frozen=True, slots=True)
class Baseline:
    """Median TPOT and TTFT at no load; None: not measured yet."""

    tpot_s: float | None = None
    ttft_s: float | None = None

    def ratio(self, stats: WindowStats) -> float:
        """How much slower the window ran: the worse of its TPOT and TTFT over the baseline,
        at least 1."""
        ratios = [1.0]
        if stats.tpot_s is not None and self.tpot_s:
            ratios.append(stats.tpot_s / self.tpot_s)
        if stats.ttft_s is not None and self.ttft_s:
            # TTFT is short and noisy (one scheduler hiccup is a large share of it): half weight
            ratios.append(1.0 + (stats.ttft_s / self.ttft_s - 1.0) * TTFT_WEIGHT)
        return max(ratios)

    def followed(self, stats: WindowStats) -> Baseline:
        """Moved a little towards a window near it (both ways): one lucky fast window must
        not make every normal one look overloaded."""
        return Baseline(_moved(self.tpot_s, stats.tpot_s), _moved(self.ttft_s, stats.ttft_s))

    def taken(self, stats: WindowStats) -> Baseline:
        """Replaced by the window's medians (where it has them)."""
        return Baseline(self.tpot_s if stats.tpot_s is None else stats.tpot_s,
                        self.ttft_s if stats.ttft_s is None else stats.ttft_s)
