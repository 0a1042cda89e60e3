"""The chaos soak's fault draw."""

from __future__ import annotations

import itertools
import random
from collections import Counter

from loadtest.chaos_faults import Fault, fault_cycle


def test_every_fault_is_drawn_once_per_cycle():
    """Hazard: independent random draws left whole kinds out of a soak (a 4-minute run drew
    neither the black hole nor added latency), so the report said nothing about them. Every
    kind now comes once in each run of ``len(Fault)`` draws, whatever the seed."""
    for seed in range(20):
        draws = list(itertools.islice(fault_cycle(random.Random(seed), list(Fault)),
                                      3 * len(Fault)))
        for start in range(0, len(draws), len(Fault)):
            assert Counter(draws[start:start + len(Fault)]) == Counter(list(Fault))
    orders = {tuple(itertools.islice(fault_cycle(random.Random(s), list(Fault)), len(Fault)))
              for s in range(5)}
    assert len(orders) > 1  # shuffled, not a fixed order
